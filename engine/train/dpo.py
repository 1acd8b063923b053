"""Preference training: TRL's `DPOTrainer` with loradeck's mixin, on pairs from `engine.data.preferences`.

The reference policy is the adapter training starts from, frozen: DPOTrainer, handed a PEFT model without a
`ref_model`, copies the starting adapter into a second adapter named "ref" and computes the reference log-probs
with it switched in. The base weights exist once; the extra memory is one adapter's size. A fresh LoRA starts at
zero, so there the reference is the base model itself.
"""

from __future__ import annotations

from pathlib import Path

from engine.config import RunConfig
from engine.train.sft import common_training_args, trainer_mixin

DPO_METRICS = {  # TRL's log key → the step event's field
    "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
    "rewards/margins": "reward_margin", "rewards/accuracies": "preference_accuracy",
}


def loradeck_dpo_trainer_class():
    """`LoradeckDPOTrainer`, built on first use (TRL is imported only inside a training process)."""
    from trl import DPOTrainer

    class LoradeckDPOTrainer(trainer_mixin(), DPOTrainer):
        """DPOTrainer with loradeck's data order, stop-aware eval and schedule continuation."""

    return LoradeckDPOTrainer


def build_dpo_config(config: RunConfig, output_dir: Path, has_eval: bool, device: str, torch_dtype):
    """DPOConfig: the shared arguments plus beta and the loss type (TRL's own defaults for everything else)."""
    from trl import DPOConfig

    return DPOConfig(
        **common_training_args(config, output_dir, has_eval, device, torch_dtype),
        beta=config.train.dpo_beta,
        loss_type=[config.train.dpo_loss],
        label_smoothing=0.1 if config.train.dpo_loss == "robust" else 0.0,  # robust DPO's flip rate (its paper's)
        include_num_input_tokens_seen="non_padding",
        precompute_ref_log_probs=False,
    )


def to_preference_dataset(pairs):
    """A `datasets.Dataset` of TRL conversational preference rows."""
    from datasets import Dataset

    return Dataset.from_list([pair.as_trl_row() for pair in pairs])


def dpo_step_fields(logs: dict) -> dict:
    """The reward figures of one TRL log line, named as loradeck's step events name them."""
    fields = {}
    for key, name in DPO_METRICS.items():
        value = logs.get(key)
        if isinstance(value, (int, float)):
            fields[name] = round(float(value), 5)
    return fields


def completion_logp(model, tokenizer, prompt: list[dict], reply: list[dict]) -> float:
    """The summed log-probability `model` gives `reply` after `prompt` (both chat turns, rendered with the
    tokenizer's chat template as DPO renders them)."""
    import torch

    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=True)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    ids = torch.tensor([full_ids], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    picked = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return float(picked[start - 1:].sum())


def preference_margins(model, tokenizer, pairs) -> list[float]:
    """Per pair, log p(chosen) − log p(rejected) under `model`: what DPO raises."""
    was_training = model.training
    model.eval()
    try:
        return [completion_logp(model, tokenizer, p.prompt, p.chosen) - completion_logp(model, tokenizer, p.prompt,
                                                                                         p.rejected) for p in pairs]
    finally:
        model.train(was_training)
