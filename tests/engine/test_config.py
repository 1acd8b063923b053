from pathlib import Path

import pytest

from engine.config import (RunConfig, config_reference, dumps_config, load_config, parse_duration, save_config)
from engine.errors import ConfigError
from tests.conftest import SAMPLE_DATA


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("preset", sorted((SAMPLE_DATA / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_preset_validates_and_finds_its_data(preset):
    config = load_config(preset)
    assert Path(config.data.path).is_file(), config.data.path


def test_defaults_when_no_file():
    config = load_config(None)
    assert config.model.name == "smollm2-135m-instruct"
    assert config.lora.target_modules == ["all-linear"]
    assert config.backend.name == "auto"


def test_unknown_key_names_the_nearest_valid_key(tmp_path):
    path = write(tmp_path, "[lora]\nrank = 8\n")
    with pytest.raises(ConfigError, match=r"unknown key \[lora\] rank — did you mean 'r'\?"):
        load_config(path)


def test_unknown_section_names_the_nearest_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[trian\] — did you mean 'train'\?"):
        load_config(write(tmp_path, "[trian]\nepochs = 2\n"))


def test_bad_value_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "[train]\nbatch_size = \"four\"\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and "train.batch_size" in str(error.value)
    assert "whole number" in str(error.value)


def test_out_of_range_and_bad_choice_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="lora.dropout.*above the maximum"):
        load_config(write(tmp_path, "[lora]\ndropout = 1.5\n"))
    with pytest.raises(ConfigError, match="backend.name.*'cuda' is not one of"):
        load_config(write(tmp_path, "[backend]\nname = \"cuda\"\n"))


def test_invalid_toml_is_one_line_with_position(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 1"):
        load_config(write(tmp_path, "[train\nepochs=1\n"))


def test_set_overrides_parse_each_type():
    config = load_config(None, ["train.max_steps=7", "model.load_in_4bit=true", "lora.dropout=0.1",
                                "lora.target_modules=q_proj,v_proj", "probe.prompts=[\"a, b\", \"c\"]"])
    assert config.train.max_steps == 7
    assert config.model.load_in_4bit is True
    assert config.lora.dropout == pytest.approx(0.1)
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.probe.prompts == ["a, b", "c"]


def test_set_errors_name_the_override():
    with pytest.raises(ConfigError, match=r"--set train.max_step=3: unknown key \[train\] max_step — did you mean 'max_steps'"):
        load_config(None, ["train.max_step=3"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["train.max_steps"])
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(None, ["model.load_in_4bit=maybe"])


def test_session_durations_are_checked():
    assert parse_duration("9h30m") == 9 * 3600 + 30 * 60
    assert parse_duration("120s") == 120
    assert parse_duration("90") == 90
    with pytest.raises(ConfigError, match="session.budget.*not a duration"):
        load_config(None, ["session.budget=soon"])
    with pytest.raises(ConfigError, match="both set"):
        load_config(None, ["session.budget=1h", "session.deadline=2026-11-24T03:00"])


def test_config_round_trips_through_toml(tmp_path):
    config = load_config(None, ["lora.r=8", "probe.prompts=[\"hi\"]", "train.report_to=tensorboard"])
    path = tmp_path / "saved.toml"
    save_config(config, path)
    again = load_config(path)
    assert again == config
    assert "[lora]" in dumps_config(RunConfig())


def test_every_field_has_help_text():
    for section, key, _default, help_text in config_reference():
        assert help_text and len(help_text) > 10, f"{section}.{key}"


def test_readme_config_reference_matches_the_config_model():
    from engine.config import config_reference_markdown
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- config-reference:start -->")[1].split("<!-- config-reference:end -->")[0]
    assert section.strip() == config_reference_markdown().strip(), "regenerate with: python -m engine.config"


def test_a_seed_beyond_32_bits_is_a_config_error_naming_the_limit():
    import pytest

    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="above the maximum 4294967295"):
        load_config(None, [f"train.seed={2**64}"])
    with pytest.raises(ConfigError, match="below the minimum 0"):
        load_config(None, ["train.seed=-1"])
    assert load_config(None, [f"train.seed={2**32 - 1}"]).train.seed == 2**32 - 1


def test_fsdp_needs_several_processes_no_optimizer_state_and_the_transformers_backend():
    import pytest

    from engine.errors import ConfigError

    sharded = ["distributed.strategy=fsdp", "distributed.processes=2"]
    assert load_config(None, sharded).distributed.strategy == "fsdp"
    assert load_config(None, ["distributed.strategy=fsdp", "distributed.processes=0"]).distributed.processes == 0
    with pytest.raises(ConfigError, match="set distributed.processes to 2 or more"):
        load_config(None, ["distributed.strategy=fsdp"])
    with pytest.raises(ConfigError, match="session.with_optimizer keeps the optimizer state, which FSDP shards"):
        load_config(None, [*sharded, "session.with_optimizer=true"])
    with pytest.raises(ConfigError, match="unsloth trains on one GPU"):
        load_config(None, [*sharded, "backend.name=unsloth"])
    with pytest.raises(ConfigError, match="distributed.strategy.*'zero3'"):
        load_config(None, ["distributed.strategy=zero3"])


def test_fsdp_without_cuda_is_refused_unless_the_test_shim_taught_accelerate(monkeypatch):
    import pytest

    from engine.errors import ConfigError
    from engine.train.distributed import FSDP_ON_CPU_ENV, check_strategy

    monkeypatch.delenv(FSDP_ON_CPU_ENV, raising=False)
    check_strategy("ddp", "cpu")
    check_strategy("fsdp", "cuda")
    with pytest.raises(ConfigError, match="shards the model across CUDA GPUs and none is visible"):
        check_strategy("fsdp", "cpu")
    monkeypatch.setenv(FSDP_ON_CPU_ENV, "1")
    check_strategy("fsdp", "cpu")


def test_gradient_checkpointing_is_true_false_or_auto_in_files_and_overrides(tmp_path):
    assert load_config(None).train.gradient_checkpointing == "auto"
    for text, expected in (("true", True), ("false", False), ('"auto"', "auto"), ('"AUTO"', "auto")):
        assert load_config(write(tmp_path, f"[train]\ngradient_checkpointing = {text}\n")).train \
            .gradient_checkpointing == expected
    for text, expected in (("yes", True), ("0", False), ("auto", "auto")):
        assert load_config(None, overrides=[f"train.gradient_checkpointing={text}"]).train \
            .gradient_checkpointing == expected
    with pytest.raises(ConfigError, match=r'train.gradient_checkpointing: expected true, false or "auto", got 2'):
        load_config(write(tmp_path, "[train]\ngradient_checkpointing = 2\n"))
    with pytest.raises(ConfigError, match=r"train.gradient_checkpointing=sometimes: train.gradient_checkpointing: "
                                          r"expected true, false or \"auto\", got 'sometimes'"):
        load_config(None, overrides=["train.gradient_checkpointing=sometimes"])
    path = tmp_path / "saved.toml"
    save_config(load_config(None), path)
    assert load_config(path).train.gradient_checkpointing == "auto"
