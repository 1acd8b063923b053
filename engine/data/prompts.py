"""Prompt sets for side-by-side and blind comparisons: a run's held-out split, or a file.

A prompt is the conversation up to (not including) its last assistant turn;
the dataset's own answer is kept as `reference` for whoever wants to look.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import DataError, RunError
from engine.run.paths import run_data_path

PROMPT_KEYS = ("prompt", "instruction", "question", "query", "input")


@dataclass
class PromptItem:
    """One prompt to compare models on."""

    messages: list[dict[str, str]]
    reference: str | None = None
    source: str = ""

    @property
    def text(self) -> str:
        """The last user message (what a pane shows as the question)."""
        return question_of(self.messages)


def question_of(messages: list[dict[str, str]]) -> str:
    """The last user message of a conversation: the question its answer answers."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _from_conversation(conversation, where: str) -> PromptItem | None:
    messages = conversation.messages
    if not messages:
        return None
    last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last_assistant is None:
        return PromptItem(list(messages), None, where)
    prompt = messages[:last_assistant]
    if not any(m["role"] == "user" for m in prompt):
        return None
    return PromptItem(prompt, messages[last_assistant]["content"], where)


def prompts_from_file(path: str | Path, limit: int | None = None, system_prompt: str = "") -> list[PromptItem]:
    """Prompts from a text file (one per line) or any dataset file training reads (its answers become references).

    Rows with only a `prompt` / `instruction` / `question` column work too. `system_prompt` is added as
    training adds it (`data.system_prompt`).
    """
    from engine.data.readers import load_dataset_file, read_records, to_conversation

    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"prompts file '{path}': no such file — pass a .txt (one prompt per line) or a dataset file")
    items: list[PromptItem] = []
    if path.suffix.lower() in (".txt", ".md", ""):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text — save the prompts file as UTF-8") from None
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        items = [PromptItem(system + [{"role": "user", "content": line.strip()}], None, f"{path}:{number}")
                 for number, line in enumerate(lines, 1) if line.strip()]
    else:
        try:
            dataset = load_dataset_file(path)
        except DataError:
            dataset = None
        if dataset is not None and dataset.format != "text":
            for record in dataset.records:
                conversation = to_conversation(record, dataset.format, str(path), system_prompt)
                item = _from_conversation(conversation, record.where(str(path)))
                if item:
                    items.append(item)
        else:
            for record in read_records(path):
                key = next((k for k in PROMPT_KEYS if isinstance(record.data.get(k), str) and record.data[k].strip()),
                           None)
                if key is None:
                    raise DataError(f"{record.where(str(path))}: no prompt here — give each row one of "
                                    f"{', '.join(PROMPT_KEYS)}, or a conversation")
                items.append(PromptItem([{"role": "user", "content": record.data[key].strip()}], None,
                                        record.where(str(path))))
    if not items:
        raise DataError(f"{path}: no prompts found — one prompt per line, or rows with a user turn")
    return items[:limit] if limit else items


def held_out_conversations(run_dir: str | Path) -> tuple[list, str]:
    """A run's held-out conversations, answers included, and the file they came from: its `eval_path`, else the rows
    its `eval_split` kept out of training (same seed, same split as the trainer)."""
    import tomllib

    from engine.data.readers import load_dataset_file, split_eval, to_conversations

    run_dir = Path(run_dir)
    config_file = run_dir / "config.toml"
    if not config_file.is_file():
        raise RunError(f"{run_dir}: no config.toml — not a run directory, so it has no held-out split")
    config = tomllib.loads(config_file.read_text(encoding="utf-8"))
    data = config.get("data", {})
    eval_file = run_data_path(run_dir, data.get("eval_path", ""))
    if data.get("eval_path") and eval_file is None:
        raise DataError(f"{run_dir}: its held-out file {data['eval_path']} is not here — load a prompts file instead")
    source = eval_file or run_data_path(run_dir, data.get("path", ""))
    if source is None:
        raise DataError(f"{run_dir}: its data file {data.get('path') or '(none)'} is not here — load a prompts "
                        "file instead")
    loaded = load_dataset_file(source, data.get("format", "auto"))
    if loaded.format == "text":
        raise DataError(f"{source}: plain-text data has no prompts — load a prompts file instead")
    conversations = to_conversations(loaded, data.get("system_prompt", ""))
    if eval_file is not None:
        return conversations, str(source)
    _, held = split_eval(conversations, data.get("eval_split", 0.1), config.get("train", {}).get("seed", 42))
    if not held:
        raise DataError(f"{run_dir}: this run kept no rows out of training (data.eval_split = 0) — load a "
                        "prompts file instead")
    return held, str(source)


def prompt_item(conversation, path: str) -> PromptItem | None:
    """The prompt of one conversation (everything before its last assistant turn, which becomes the reference);
    None when it has no user turn to answer."""
    return _from_conversation(conversation, conversation.source.where(path) if conversation.source else path)


def held_out_prompts(run_dir: str | Path, limit: int | None = None) -> list[PromptItem]:
    """The prompts of a run's held-out data (see `held_out_conversations`)."""
    conversations, source = held_out_conversations(run_dir)
    items = [item for item in (prompt_item(c, source) for c in conversations) if item]
    return items[:limit] if limit else items
