"""Which base model is this? A fingerprint recorded in every checkpoint, checked when a run resumes.

An adapter only continues on the base it was trained with. The fingerprint is a
hash of the model's config plus a few weights that 4-bit loading keeps in
float, so a QLoRA bundle and a bf16 reload of the same model match while a
different model (or different weights under the same config) is refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from engine.errors import RunError


def base_fingerprint(model, name: str) -> dict[str, Any]:
    """Name, a hash of the base model's config, and a sample of weights that 4-bit loading keeps in float.

    Embedding and norm tensors stay floating point under NF4, so a QLoRA bundle and
    a bf16 reload of the same model agree; `same_base` compares samples with a tolerance.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "quantization_config",
                     "use_cache", "architectures", "pretraining_tp"):
        config.pop(volatile, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    sample: dict[str, list[float]] = {}
    for key, tensor in base.state_dict().items():
        if "lora_" in key or not tensor.dtype.is_floating_point or not ("embed" in key or "norm" in key):
            continue
        sample[key.removeprefix("base_model.model.")] = [float(f"{v:.6g}") for v in tensor.detach().flatten()[:16].float().cpu().tolist()]
        if len(sample) == 3:
            break
    return {"name": name, "hash": digest.hexdigest()[:16], "sample": sample}


def same_base(recorded: dict[str, Any], loaded: dict[str, Any], tolerance: float = 1e-2) -> bool:
    """Whether two fingerprints describe one base model (same config, weight samples equal within bf16 rounding)."""
    if recorded.get("hash") != loaded.get("hash"):
        return False
    for key, values in (recorded.get("sample") or {}).items():
        other = (loaded.get("sample") or {}).get(key)
        if other is None or len(other) != len(values):
            return False
        if any(abs(a - b) > tolerance * abs(a) + 1e-6 for a, b in zip(values, other)):
            return False
    return True


def check_fingerprint(state: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """RunError when the loaded base model is not the one the bundle was trained on."""

    recorded = state.get("base_model") or {}
    if recorded and not same_base(recorded, fingerprint):
        what = "architecture/config" if recorded.get("hash") != fingerprint.get("hash") else "weights"
        raise RunError(f"cannot resume: the base model {fingerprint.get('name')!r} differs in {what} from "
                       f"{recorded.get('name')!r}, the base the bundle was trained on — load that model "
                       f"(--set model.name=...)")

