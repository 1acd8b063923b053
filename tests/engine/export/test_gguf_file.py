"""GGUF files written in pure Python load back into transformers: the Llama layout with the real SmolLM2
tokenizer, a SentencePiece-style tokenizer, and Qwen2's biases; unsupported models are named in one line."""

from __future__ import annotations

import pytest

from engine.errors import ModelError
from engine.export.gguf_file import gguf_architecture, pre_tokenizer_name, rope_settings, write_gguf
from tests.small_models import save_tiny_model, sentencepiece_tokenizer, byte_level_tokenizer

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Café? 12 + 30 = ? 東京 🙂"},
        {"role": "assistant", "content": "ANSWER: 42"}, {"role": "user", "content": "And again?"}]


def _round_trip(folder, type_name="f16", chat=CHAT, weights=True):
    """Write `folder` as GGUF (in a folder of its own, as export does), load it back with transformers, and
    return (max |logit difference|, top-1 agreement) on the sample chat, after checking its token ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = folder.parent / "gguf"
    target.mkdir()
    write_gguf(folder, target / f"model-{type_name}.gguf", type_name, name="test")
    original = AutoTokenizer.from_pretrained(folder)
    loaded = AutoTokenizer.from_pretrained(target, gguf_file=f"model-{type_name}.gguf")
    if chat is None:  # plain text: the tokenizer alone, no chat template
        text = "What is 12 + 30? Café, naïve, 東京 🙂 — and tabs\tand  double  spaces."
        # transformers' GGUF reader ignores add_bos_token (llama.cpp reads it; checked below)
        ids = original(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids, "same token ids for a sample text"
    else:
        ids = original.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
        assert loaded.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"] == ids, "same token ids for a sample chat"
        assert loaded.chat_template == original.chat_template
        assert loaded.decode(ids, skip_special_tokens=True) == original.decode(ids, skip_special_tokens=True)
    if not weights:
        return None
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    back = AutoModelForCausalLM.from_pretrained(target, gguf_file=f"model-{type_name}.gguf", dtype=torch.float32)
    with torch.no_grad():
        a = model(input_ids=torch.tensor([ids])).logits
        b = back(input_ids=torch.tensor([ids])).logits
    return float((a - b).abs().max()), float((a.argmax(-1) == b.argmax(-1)).float().mean())


def test_the_real_smollm2_tokenizer_and_chat_template_survive(tiny_model_dir, tmp_path):
    """The bundled model's 49k-token vocabulary and merges (weights round-trip in the small-vocabulary tests)."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    _round_trip(folder, weights=False)


def test_sentencepiece_style_tokenizer_round_trips(tmp_path):
    # plain text: after a special token, HF's non-legacy mode and the GGUF reading differ by a leading "▁" (the
    # export's own check reports that as a tokenizer difference)
    folder = save_tiny_model(tmp_path / "spm", sentencepiece_tokenizer())
    difference, agreement = _round_trip(folder, "f16", None)
    assert difference < 1e-3 and agreement == 1.0
    from gguf import GGUFReader

    reader = GGUFReader(folder.parent / "gguf" / "model-f16.gguf")
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is True, "the tokenizer puts <s> in front"
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[3] == 6 and types[1] == 3, "<0x00> is a byte token, <s> a control token"


def test_qwen2_layout_with_biases_and_untied_head_round_trips_in_q8_0(tmp_path, smollm_tokenizer):
    folder = save_tiny_model(tmp_path / "qwen", byte_level_tokenizer(smollm_tokenizer.chat_template), "qwen2")
    difference, agreement = _round_trip(folder, "q8_0")
    assert 0 < difference < 0.5 and agreement > 0.9, "q8_0 rounds, a little"
    from gguf import GGUFReader

    reader = GGUFReader(folder.parent / "gguf" / "model-q8_0.gguf")
    names = {t.name: t.tensor_type.name for t in reader.tensors}
    assert names["output.weight"] == "Q8_0" and names["blk.0.attn_q.bias"] == "F32"
    assert reader.fields["general.architecture"].contents() == "qwen2"


def test_unsupported_architectures_and_rope_scalings_are_named():
    with pytest.raises(ModelError, match=r"GPT2LMHeadModel is not supported \(supported: Llama, Mistral, Qwen2\)"):
        gguf_architecture({"architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(ModelError, match="rope scaling 'yarn'"):
        gguf_architecture({"architectures": ["LlamaForCausalLM"], "rope_scaling": {"rope_type": "yarn", "factor": 4}})
    assert gguf_architecture({"architectures": ["MistralForCausalLM"]}) == ("llama", True)


def test_rope_settings_read_both_config_layouts():
    assert rope_settings({"rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}}) == (1e5, {})
    theta, scaling = rope_settings({"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert theta == 5e5 and scaling["rope_type"] == "linear" and scaling["factor"] == 2.0


def test_pre_tokenizer_names_follow_the_split_rules():
    byte_level = {"type": "ByteLevel", "use_regex": True}
    assert pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt-2"
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level]}}) == "smollm"
    llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    split = {"type": "Split", "pattern": {"Regex": llama3}}
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]}}) == \
        "llama-bpe"
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}}) is None
