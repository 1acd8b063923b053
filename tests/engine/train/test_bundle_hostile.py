"""A handoff bundle is untrusted input from another machine: every crafted kind is refused in one line, the
bundle is left untouched, and what a run bundles cannot change behind its back."""

import json
import os
import shutil
import stat

import pytest

from engine.errors import RunError
from engine.train.checkpoint import _state_digest, verify_checkpoint
from engine.train.handoff import open_bundle
from engine.train.run import run_training
from tests.conftest import SAMPLE_DATA, tiny_config


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A finished two-step run whose data is a private file of its own."""
    root = tmp_path_factory.mktemp("bundles")
    data = root / "mine.jsonl"
    shutil.copy(SAMPLE_DATA / "demo_train.jsonl", data)
    run_dir = root / "run"
    config = tiny_config(tiny_model_dir, "train.max_steps=2", "train.save_every=1", f"data.path={data}")
    assert run_training(run_dir, config) == 0
    return run_dir, data


def rewrite_state(bundle, change):
    """What a crafter does: edit state.json and recompute its digest (the digest is no secret)."""
    state = json.loads((bundle / "state.json").read_text())
    change(state)
    state["state_sha256"] = _state_digest(state)
    (bundle / "state.json").write_text(json.dumps(state))


def pin(bundle, name):
    from engine.train.checkpoint import sha256_file

    def add(state):
        state["files"][name] = {"size": (bundle / name).stat().st_size, "sha256": sha256_file(bundle / name)}
    rewrite_state(bundle, add)


def link_data_outside(bundle):
    (bundle / "data" / "train.jsonl").unlink()
    (bundle / "data" / "train.jsonl").symlink_to(SAMPLE_DATA / "demo_train.jsonl")


def link_data_folder_outside(bundle):
    shutil.rmtree(bundle / "data")
    (bundle / "data").symlink_to(SAMPLE_DATA)


def extra_base_weights(bundle):
    shutil.copy(bundle / "adapter_model.safetensors", bundle / "model.safetensors")


def escaping_name(name):
    def craft(bundle):
        rewrite_state(bundle, lambda state: state["files"].update({name: {"size": 1, "sha256": "0" * 64}}))
    return craft


def truncate_data(bundle):
    path = bundle / "data" / "train.jsonl"
    path.write_bytes(path.read_bytes()[:-200])


def edit_config(bundle):
    path = bundle / "config.toml"
    path.write_text(path.read_text().replace("max_steps = 2", "max_steps = 3"))


def edit_state(bundle):
    path = bundle / "state.json"
    path.write_text(path.read_text().replace('"global_step": 2', '"global_step": 1'))


def point_data_outside(bundle):
    secret = bundle.parent / f"{bundle.name}-secret.jsonl"
    shutil.copy(SAMPLE_DATA / "demo_heldout.jsonl", secret)
    path = bundle / "config.toml"
    path.write_text(path.read_text().replace('path = "data/train.jsonl"', f'path = "{secret}"'))
    pin(bundle, "config.toml")


def fifo_inside(bundle):
    os.mkfifo(bundle / "RESUME2.md")


CRAFTED = {
    "data file linked outside": (link_data_outside, "symbolic link"),
    "data folder linked outside": (link_data_folder_outside, "symbolic link"),
    "extra base weights": (extra_base_weights, "model.safetensors is not in the bundle's manifest"),
    "manifest name with ..": (escaping_name("../../../../etc/hostname"), "outside the bundle"),
    "absolute manifest name": (escaping_name("/etc/hostname"), "outside the bundle"),
    "truncated data": (truncate_data, "truncated"),
    "edited config": (edit_config, "does not match its recorded checksum"),
    "edited state": (edit_state, "does not match its recorded digest"),
    "config reads a file outside": (point_data_outside, "not a file the bundle carries"),
    "special file inside": (fifo_inside, "not a regular file"),
}


@pytest.mark.parametrize("kind", CRAFTED)
def test_a_crafted_bundle_is_refused_in_one_line_and_left_untouched(trained, tmp_path, kind):
    craft, expected = CRAFTED[kind]
    bundle = tmp_path / "bundle"
    shutil.copytree(trained[0] / "handoff", bundle)
    craft(bundle)
    before = {p: (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink()
                  and stat.S_ISREG(p.lstat().st_mode) else None) for p in bundle.rglob("*")}
    with pytest.raises(RunError) as refused:
        open_bundle(bundle)
    message = str(refused.value)
    assert expected in message and "\n" not in message
    after = {p: (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink()
                 and stat.S_ISREG(p.lstat().st_mode) else None) for p in bundle.rglob("*")}
    assert before == after


def test_every_file_of_a_bundle_is_pinned_and_data_names_never_grow(trained, tmp_path):
    run_dir, _ = trained
    state = verify_checkpoint(run_dir / "handoff")
    on_disk = sorted(p.relative_to(run_dir / "handoff").as_posix() for p in (run_dir / "handoff").rglob("*")
                     if p.is_file())
    assert sorted(state["files"]) == [name for name in on_disk if name != "state.json"]
    assert {"config.toml", "RESUME.md", "data/train.jsonl", "data/eval.jsonl"} <= set(state["files"])
    bundle = open_bundle(run_dir / "handoff", ["train.max_steps=3"])
    assert run_training(tmp_path / "second", bundle.config, resume_from=bundle.path) == 0
    assert sorted(p.name for p in (tmp_path / "second" / "handoff" / "data").iterdir()) == ["eval.jsonl", "train.jsonl"]


def test_editing_the_source_data_later_never_changes_the_bundle(trained, tmp_path):
    run_dir, data = trained
    bundled = run_dir / "handoff" / "data" / "train.jsonl"
    assert os.stat(bundled).st_ino != os.stat(data).st_ino, "a copy, not a link to the user's file"
    original = data.read_bytes()
    try:
        data.write_text("edited in place\n")
        assert bundled.read_bytes() == original
        assert verify_checkpoint(run_dir / "handoff")["global_step"] == 2
    finally:
        data.write_bytes(original)


def test_the_bundle_loss_tail_includes_the_step_it_was_saved_at(trained):
    run_dir, _ = trained
    state = json.loads((run_dir / "checkpoints" / "step-000001" / "state.json").read_text())
    assert state["global_step"] == 1 and state["loss_tail"][-1][0] == 1


def test_run_files_are_private_to_the_user(trained):
    run_dir, _ = trained
    for path in [run_dir, *run_dir.rglob("*")]:
        assert path.lstat().st_mode & 0o077 == 0, f"{path} is readable by others"


def test_a_bundle_with_nonsense_process_counts_resumes_as_if_saved_by_one(tmp_path):
    from engine.config import load_config
    from engine.train.handoff import keep_global_batch

    config = load_config(None, ["distributed.processes=2", "train.batch_size=2"])
    original = load_config(None, ["train.batch_size=2", "train.grad_accum=2"])
    note = keep_global_batch({"world_size": "many", "global_batch": -3}, original, config, [])
    assert note and "saved by 1 process(es), resumed by 2" in note and config.train.grad_accum == 1
