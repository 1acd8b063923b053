"""Writing a merged Hugging Face folder as a GGUF file, in pure Python (the `gguf` package; no llama.cpp build).

Tensors stream from the safetensors files one at a time: each is read, converted
(q/k rows re-ordered the way llama.cpp's rotary code expects, then cast or
quantized) and written before the next is read, so memory holds one tensor, not
the model. The tokenizer goes in as llama.cpp reads it: the token list with
types, the BPE merges, the special-token ids, whether BOS is added, the
pre-tokenizer's name and the chat template.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import ModelError

# HF architecture -> (GGUF architecture, whether llama.cpp wants q/k rows permuted for its rotary layout)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}
SUPPORTED_NAMES = "Llama, Mistral, Qwen2"

# --gguf TYPE -> (ggml tensor type name, llama file type name); the ones gguf's Python quantizers can write
PYTHON_TYPES = {
    "f16": ("F16", "MOSTLY_F16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "f32": ("F32", "ALL_F32"),
}
# K-quants need llama.cpp's C++ quantizer: offered when `llama-quantize` is on PATH (made from the f16 file)
LLAMA_QUANTIZE_TYPES = {"q4_k_m": "Q4_K_M", "q4_k_s": "Q4_K_S", "q5_k_m": "Q5_K_M", "q5_k_s": "Q5_K_S",
                        "q6_k": "Q6_K", "q3_k_m": "Q3_K_M", "q2_k": "Q2_K"}
ROPE_SCALING_TYPES = (None, "default", "linear", "llama3")


def llama_quantize_binary() -> str | None:
    """The `llama-quantize` program on PATH (K-quants come from it), or None."""
    return shutil.which("llama-quantize")


def known_types() -> list[str]:
    """Every `--gguf TYPE` this machine can write."""
    return list(PYTHON_TYPES) + (list(LLAMA_QUANTIZE_TYPES) if llama_quantize_binary() else [])


def check_gguf_types(types: list[str]) -> list[str]:
    """Lower-cased, de-duplicated GGUF types; a one-line ModelError for one this machine cannot write."""
    wanted = list(dict.fromkeys(t.strip().lower() for t in types))
    for name in wanted:
        if name in PYTHON_TYPES:
            continue
        if name in LLAMA_QUANTIZE_TYPES:
            if not llama_quantize_binary():
                raise ModelError(f"--gguf {name}: K-quants need llama.cpp's `llama-quantize` on PATH (not found) — "
                                 f"use q8_0 / q4_0 (written here in Python), or install llama.cpp")
            continue
        raise ModelError(f"--gguf {name}: unknown type — choose from {', '.join(known_types())}")
    return wanted


def gguf_architecture(config: dict) -> tuple[str, bool]:
    """(GGUF architecture, permute q/k) for a model's config.json; a one-line ModelError naming what is supported."""
    architectures = config.get("architectures") or []
    name = architectures[0] if architectures else config.get("model_type", "?")
    if name not in ARCHITECTURES:
        raise ModelError(f"GGUF export: architecture {name} is not supported (supported: {SUPPORTED_NAMES}) — the "
                         "merged folder still works with transformers, vLLM and llama.cpp's convert_hf_to_gguf.py")
    kind = rope_settings(config)[1].get("rope_type")
    if kind not in ROPE_SCALING_TYPES:
        raise ModelError(f"GGUF export: rope scaling '{kind}' is not supported (supported: none, linear, llama3)")
    return ARCHITECTURES[name]


def rope_settings(config: dict) -> tuple[float, dict]:
    """(rope theta, scaling settings) from a config.json of either layout: transformers 5's `rope_parameters`
    or the older top-level `rope_theta` + `rope_scaling`."""
    parameters = config.get("rope_parameters")
    if isinstance(parameters, dict) and "rope_theta" in parameters:
        scaling = dict(parameters)
        theta = scaling.pop("rope_theta")
    else:
        theta, scaling = config.get("rope_theta", 10000.0), dict(config.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type"))
    return float(theta), ({} if kind in (None, "default") else dict(scaling, rope_type=kind))


# ---------------------------------------------------------------- tensors

def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / name for name in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no .safetensors files to convert")
    return files


def parameter_count(folder: Path) -> int:
    """How many weights the safetensors files in `folder` hold, from their headers alone."""
    return sum(math.prod(info["shape"]) for _, _, info in _tensor_entries(_safetensors_files(folder)))


def _tensor_entries(files: list[Path]) -> list[tuple[Path, str, dict]]:
    """(file, name, header entry with dtype, shape and absolute data offsets) of every tensor."""
    entries = []
    for file in files:
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                begin, end = info["data_offsets"]
                entries.append((file, name, dict(info, start=8 + size + begin, stop=8 + size + end)))
    return entries


SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "uint16", "F64": "float64"}


def read_tensor(file: Path, entry: dict):
    """One tensor as float32 numpy, read with plain file reads: a memory map would leave every page it touched
    resident, and the whole model would count against memory by the end."""
    import numpy as np

    kind = SAFETENSORS_DTYPES.get(entry["dtype"])
    if kind is None:
        raise ModelError(f"{file.name}: tensor dtype {entry['dtype']} cannot be converted to GGUF")
    with open(file, "rb") as handle:
        handle.seek(entry["start"])
        raw = handle.read(entry["stop"] - entry["start"])
    data = np.frombuffer(raw, dtype=np.dtype(kind).newbyteorder("<"))
    if entry["dtype"] == "BF16":  # bf16 is the top half of a float32
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32, copy=False).reshape(entry["shape"])


def _permute_rotary(weights, heads: int):
    """llama.cpp's rotary layout: within each head, the two halves interleaved (the inverse of what
    transformers undoes when it reads a llama GGUF)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _llama3_rope_factors(config: dict):
    """The per-frequency divisors llama.cpp reads from `rope_freqs.weight` for llama3-style rope scaling."""
    import numpy as np

    base, scaling = rope_settings(config)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    original = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = original / low, original / high
    factors = []
    for index in range(0, head_dim, 2):
        wavelen = 2 * math.pi / (1.0 / base ** (index / head_dim))
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


@dataclass
class PlannedTensor:
    """One tensor as it will be written."""

    source: Path | None  # None: computed (rope factors)
    entry: dict | None
    hf_name: str
    gguf_name: str
    shape: list[int]
    ggml_type: str  # F32, F16, Q8_0, ...


def plan_tensors(folder: Path, config: dict, type_name: str) -> list[PlannedTensor]:
    """Every tensor of the merged model with its GGUF name and type, from headers only (nothing loaded)."""
    import gguf

    arch, _ = gguf_architecture(config)
    arch_enum = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)
    name_map = gguf.get_tensor_name_map(arch_enum, config["num_hidden_layers"])
    target = PYTHON_TYPES[type_name][0]
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[target]][0]
    planned = []
    for file, hf_name, entry in _tensor_entries(_safetensors_files(folder)):
        shape = list(entry["shape"])
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelError(f"GGUF export: no GGUF name for tensor {hf_name} ({arch}) — this model's layout is not "
                             f"the plain {arch} one")
        if len(shape) == 1:
            ggml_type = "F32"  # norms and biases stay full precision, as llama.cpp keeps them
        elif target not in ("F32", "F16", "BF16") and shape[-1] % block:
            ggml_type = "F16"  # rows that do not split into quantization blocks
        else:
            ggml_type = target
        planned.append(PlannedTensor(file, entry, hf_name, gguf_name, shape, ggml_type))
    if rope_settings(config)[1].get("rope_type") == "llama3":
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        planned.append(PlannedTensor(None, None, "rope_freqs", "rope_freqs.weight", [head_dim // 2], "F32"))
    return planned


def _tensor_bytes(shape: list[int], ggml_type: str) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type]]
    return math.prod(shape[:-1]) * (shape[-1] // block) * size


def estimate_gguf_bytes(folder: Path, config: dict, type_name: str) -> int:
    """The size of the GGUF file for `type_name`, from the safetensors headers (plus a margin for the vocab)."""
    tensors = plan_tensors(folder, config, type_name)
    return sum(_tensor_bytes(t.shape, t.ggml_type) for t in tensors) + (8 << 20)


def _converted(planned: PlannedTensor, config: dict, permute: bool):
    import gguf
    import numpy as np

    data = _llama3_rope_factors(config) if planned.source is None else read_tensor(planned.source, planned.entry)
    if permute and planned.hf_name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = config["num_attention_heads"]
        if planned.hf_name.endswith("k_proj.weight"):
            heads = config.get("num_key_value_heads") or heads
        data = _permute_rotary(data, heads)
    if planned.ggml_type == "F32":
        return np.ascontiguousarray(data, dtype=np.float32)
    if planned.ggml_type == "F16":
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32),
                                gguf.GGMLQuantizationType[planned.ggml_type])


# ---------------------------------------------------------------- tokenizer

def pre_tokenizer_name(tokenizer_json: dict) -> str | None:
    """llama.cpp's name for how this BPE tokenizer splits text before merging, recognised from its pre_tokenizer
    settings; None when it is none of the layouts named here."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        pattern = (parts[0].get("pattern") or {}).get("Regex", "")
        if r"\p{N}{1,3}" in pattern:
            return "llama-bpe"
        if r"\p{N}" in pattern and r"[^\r\n\p{L}\p{N}]?\p{L}+" in pattern:
            return "qwen2"
    return None


@dataclass
class VocabPlan:
    """The tokenizer as GGUF stores it."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style BPE with byte fallback)
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None


def read_vocab(folder: Path, vocab_size: int) -> VocabPlan:
    """The token list, types (and for SentencePiece-style vocabularies, scores) of the tokenizer in `folder`,
    padded to the model's `vocab_size` as llama.cpp expects."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"GGUF export: {folder} has no tokenizer.json — only fast (tokenizers) tokenizers convert")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ModelError(f"GGUF export: tokenizer type {model.get('type')} is not supported (BPE only: byte-level as "
                         "in Llama 3, Qwen2, SmolLM; or SentencePiece-style as in Llama 2, Mistral)")
    decoder_types = json.dumps(data.get("decoder") or {})
    byte_level = '"ByteLevel"' in json.dumps(data.get("pre_tokenizer") or {})
    sentencepiece_style = not byte_level and ('"Metaspace"' in json.dumps(data.get("pre_tokenizer") or {})
                                              or '"Replace"' in decoder_types) and model.get("byte_fallback")
    if not byte_level and not sentencepiece_style:
        raise ModelError("GGUF export: this BPE tokenizer is neither byte-level nor SentencePiece-style — not supported")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {item["id"]: item for item in data.get("added_tokens") or []}
    for token_id, item in added.items():
        vocab.setdefault(item["content"], token_id)
    by_id = {token_id: token for token, token_id in vocab.items()}
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for token_id in range(size):
        token = by_id.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif sentencepiece_style and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            tokens.append(token)
            types.append(gguf.TokenType.BYTE)
        elif token_id in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token_id].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    unk = model.get("unk_token")
    if unk in vocab:
        types[vocab[unk]] = gguf.TokenType.UNKNOWN
    scores = None
    if sentencepiece_style:
        # SentencePiece merges the pair whose result scores highest: a piece made by an earlier merge scores higher
        rank = {}
        for index, merge in enumerate(model.get("merges") or []):
            left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
            rank.setdefault(left + right, index)
        scores = [-float(rank[token]) if token in rank else 0.0 for token in tokens]
    return VocabPlan("gpt2" if byte_level else "llama", pre_tokenizer_name(data) if byte_level else None,
                     tokens, types, scores)


def _add_tokenizer(writer, folder: Path, vocab: VocabPlan) -> None:
    import gguf

    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    elif vocab.model == "gpt2":
        writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    special = gguf.SpecialVocab(folder, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
    special.add_special_token.update(_adds_special_tokens(folder))
    special.add_to_gguf(writer, quiet=True)


def _adds_special_tokens(folder: Path) -> dict[str, bool]:
    """Whether the tokenizer puts BOS in front / EOS behind plain text, asked of the tokenizer itself (its config
    may not say: newer ones keep it in the post-processor)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {"bos": bos is not None and bool(ids) and ids[0] == bos,
            "eos": eos is not None and len(ids) > 1 and ids[-1] == eos}


# ---------------------------------------------------------------- the file

def _add_hyperparameters(writer, config: dict, file_type: str) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    theta, scaling = rope_settings(config)
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    if scaling.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    writer.add_file_type(gguf.LlamaFileType[file_type])
    if file_type not in ("ALL_F32", "MOSTLY_F16", "MOSTLY_BF16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_gguf(folder: str | Path, target: str | Path, type_name: str, *, name: str,
               progress: Callable[[float, str], None] | None = None) -> Path:
    """Write the HF model in `folder` (a merged safetensors folder) as a GGUF file of `type_name` at `target`.

    Streams tensor by tensor (memory holds one tensor); writes to a temporary name and renames it into place, so a
    failed write never leaves a file that looks finished.
    """
    import gguf
    import numpy as np

    folder, target = Path(folder), Path(target)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch, permute = gguf_architecture(config)
    vocab = read_vocab(folder, config["vocab_size"])
    tensors = plan_tensors(folder, config, type_name)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        _add_hyperparameters(writer, config, PYTHON_TYPES[type_name][1])
        _add_tokenizer(writer, folder, vocab)
        for planned in tensors:
            ggml_type = gguf.GGMLQuantizationType[planned.ggml_type]
            nbytes = _tensor_bytes(planned.shape, planned.ggml_type)
            if planned.ggml_type in ("F32", "F16"):
                writer.add_tensor_info(planned.gguf_name, planned.shape,
                                       np.dtype(np.float32 if planned.ggml_type == "F32" else np.float16), nbytes)
            else:
                byte_shape = gguf.quant_shape_to_byte_shape(planned.shape, ggml_type)
                writer.add_tensor_info(planned.gguf_name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for index, planned in enumerate(tensors):
            writer.write_tensor_data(_converted(planned, config, permute))
            if progress:
                progress((index + 1) / len(tensors), f"{target.name}: {planned.gguf_name}")
        writer.close()
        tmp.replace(target)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return target


def llama_quantize(f16_file: Path, target: Path, type_name: str) -> Path:
    """A K-quant made by llama.cpp's `llama-quantize` from the f16 file."""
    import subprocess

    binary = llama_quantize_binary()
    if binary is None:
        raise ModelError(f"--gguf {type_name}: `llama-quantize` is not on PATH")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    result = subprocess.run([binary, str(f16_file), str(tmp), LLAMA_QUANTIZE_TYPES[type_name]],
                            capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"llama-quantize {LLAMA_QUANTIZE_TYPES[type_name]} failed: {last[0]}")
    tmp.replace(target)
    return target
