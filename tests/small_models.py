"""Small models for export tests: tokenizers of a few hundred tokens trained here (so loading a GGUF back takes
a second, not the 49k-token SmolLM2 vocabulary's half minute), one byte-level like SmolLM2 / Llama 3 and one
SentencePiece-style like Llama 2 / Mistral."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SAMPLE_DATA

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
    "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() "
    "+ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")


def _texts() -> list[str]:
    rows = [json.loads(line) for line in (SAMPLE_DATA / "demo_train.jsonl").read_text().splitlines()]
    return [row["instruction"] + "\n" + row["output"] for row in rows]


def byte_level_tokenizer(chat_template: str):
    """A byte-level BPE tokenizer (GPT-2 / SmolLM2 style) of ~600 tokens with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = chat_template
    return fast


def sentencepiece_tokenizer():
    """A SentencePiece-style BPE tokenizer (Llama 2 / Mistral style: ▁ for spaces, byte fallback) with the
    Llama 2 chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import LlamaTokenizerFast

    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokenizer.train_from_iterator(_texts(), trainers.BpeTrainer(vocab_size=700, special_tokens=specials))
    fast = LlamaTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                              add_bos_token=True)
    fast.chat_template = LLAMA2_TEMPLATE
    return fast


def save_tiny_model(folder: Path, tokenizer, architecture: str = "llama") -> Path:
    """A random 2-layer model of `architecture` (llama or qwen2) for `tokenizer`, saved with it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shapes = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=architecture == "llama", bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config_class, model_class = (LlamaConfig, LlamaForCausalLM) if architecture == "llama" else \
        (Qwen2Config, Qwen2ForCausalLM)
    torch.manual_seed(0)
    model = model_class(config_class(**shapes))
    with torch.no_grad():  # random weights big enough that rounding differences show in the logits
        for parameter in model.parameters():
            if parameter.dim() == 1 and architecture == "qwen2":
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
