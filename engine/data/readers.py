"""Datasets in: read files, detect the format, turn rows into chat messages, split off held-out rows.

Every supported format becomes a list of `{"role", "content"}` messages that the
model's own chat template renders (`engine.data.tokenize`).

Bad input never raises a traceback: every problem is a `DataError` naming the
file, the line or record, and what to do.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from engine.errors import DataError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool",
                  "function": "tool"}
MESSAGE_ROLES = {"system", "user", "assistant", "tool", "function", "developer"}
FORMAT_REASONS = {
    "alpaca": "columns instruction + output",
    "sharegpt": "a 'conversations' list of {from, value} turns",
    "messages": "a 'messages' list of {role, content} turns",
    "prompt_completion": "columns prompt + completion",
    "text": "a single 'text' column (plain text, trained on every token)",
    "preference": "columns chosen + rejected",
}

OPENAI_REASON = "OpenAI chat format: 'messages' with tool calls, tool results or per-turn weights"


@dataclass
class Record:
    """One raw row and where it came from (1-based record number and file line when known)."""

    data: dict[str, Any]
    number: int
    line: int | None = None

    def where(self, path: str) -> str:
        return f"{path}:{self.line}" if self.line else f"{path}: record {self.number}"


@dataclass
class Conversation:
    """A row turned into chat messages (or plain text for the `text` format)."""

    messages: list[dict[str, Any]] | None  # role, content; tool_calls, tool_call_id, weight (0) where given
    text: str | None = None
    tools: list | None = None
    source: Record | None = None


@dataclass
class LoadedDataset:
    """Rows read from disk plus the detected format."""

    path: str
    records: list[Record]
    format: str
    format_reason: str
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading files

def _check_text(path: Path, raw: bytes) -> str:
    if not raw.strip():
        raise DataError(f"{path}: the file is empty — point data.path at a file with rows")
    if b"\x00" in raw[:8192]:
        raise DataError(f"{path}: binary file, not JSON/JSONL/CSV text — export the data as .jsonl, .json, .csv "
                        "or .parquet")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}) — re-save the file as UTF-8, "
                        "e.g. iconv -f latin1 -t utf-8") from None


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_number}: invalid JSON ({exc.msg} at column {exc.colno}) — fix or delete "
                            "this line") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}:{line_number}: expected a JSON object per line, got {type(value).__name__}")
        records.append(Record(value, len(records) + 1, line_number))
    return records


def _read_json(path: Path, text: str) -> list[Record]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg.startswith("Extra data"):
            return _read_jsonl(path, text)  # JSON lines saved with a .json name
        cut_off = not text.rstrip().endswith(("]", "}"))
        hint = "the file looks cut off — re-export it" if cut_off else "fix the JSON there"
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}) — {hint}") from None
    if isinstance(value, dict):
        lists = [key for key, item in value.items() if isinstance(item, list)]
        if len(lists) == 1 and all(isinstance(row, dict) for row in value[lists[0]]):
            value = value[lists[0]]
        else:
            raise DataError(f"{path}: expected a JSON array of objects (one per sample), got an object with keys "
                            f"{sorted(value)[:5]}")
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(value).__name__}")
    records = []
    for index, row in enumerate(value, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {index}: expected an object, got {type(row).__name__} {str(row)[:40]!r}")
        records.append(Record(row, index))
    return records


def _read_csv(path: Path, text: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise DataError(f"{path}: no header row — the first line must name the columns")
    records = []
    for row in reader:
        if None in row:
            raise DataError(f"{path}:{reader.line_num}: more values than header columns — quote fields that contain "
                            "commas")
        records.append(Record(dict(row), len(records) + 1, reader.line_num))
    return records


def _read_table(rows: Iterable[dict], path: str) -> list[Record]:
    return [Record(dict(row), index) for index, row in enumerate(rows, start=1)]


def require_data_path(path: str, method: str = "sft") -> None:
    """Refuse an empty `data.path` in one line that says what a run of `method` (sft or dpo) trains on."""
    if not path:
        raise DataError("data.path is empty — set it to preference pairs, e.g. --set data.path=RUN/chat/"
                        "preferences.jsonl" if method == "dpo" else
                        "data.path is empty — set it in the config or with --set data.path=FILE")


def is_hub_dataset(path: str | Path) -> bool:
    """Whether a data path names a hub dataset (`owner/name`, nothing by that name here) instead of a local file."""
    text = str(path)
    return (text.count("/") == 1 and not text.startswith((".", "/", "~")) and Path(text).suffix == ""
            and not Path(text).expanduser().exists())


def check_data_source(path: str | Path) -> None:
    """Refuse, without reading it, a data path that names no dataset: a missing file, or a folder that is not a
    `save_to_disk` folder. A hub name passes (it is tried when read)."""
    source = Path(path).expanduser()
    if source.is_dir():
        if not ((source / "dataset_info.json").is_file() or (source / "dataset_dict.json").is_file()):
            raise DataError(f"{path}: a folder, but not a datasets.save_to_disk folder — point at a data file instead")
    elif not source.exists() and not is_hub_dataset(path):
        raise DataError(f"{path}: no such file — check data.path (relative paths count from the config's folder)")


def read_records(path: str | Path) -> list[Record]:
    """Every row of a local dataset file or `save_to_disk` folder, or a hub dataset where the network allows."""
    check_data_source(path)
    source = Path(path).expanduser()
    if source.is_dir():
        from datasets import DatasetDict, load_from_disk

        loaded = load_from_disk(str(source))
        if isinstance(loaded, DatasetDict):
            split = "train" if "train" in loaded else next(iter(loaded))
            loaded = loaded[split]
        return _read_table(loaded, str(source))
    if is_hub_dataset(path):
        return _read_hub(str(path))
    suffix = source.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(source)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:120]})") from None
        return _read_table(table.to_pylist(), str(source))
    raw = source.read_bytes()
    if raw[:4] == b"PAR1":
        raise DataError(f"{path}: Parquet content with a {suffix} name — rename it to .parquet")
    text = _check_text(source, raw)
    if suffix == ".jsonl" or suffix == ".ndjson":
        records = _read_jsonl(source, text)
    elif suffix == ".json":
        records = _read_json(source, text)
    elif suffix in (".csv", ".tsv"):
        records = _read_csv(source, text)
    else:
        stripped = text.lstrip()
        if stripped.startswith("["):
            records = _read_json(source, text)
        elif stripped.startswith("{"):
            records = _read_jsonl(source, text)
        else:
            raise DataError(f"{path}: unknown file type '{suffix}' — use .jsonl, .json, .csv or .parquet")
    if not records:
        raise DataError(f"{path}: no rows in the file — it holds only blank lines or an empty list")
    return records


def _read_hub(name: str) -> list[Record]:
    try:
        from datasets import load_dataset

        loaded = load_dataset(name, split="train")
    except Exception as exc:
        raise DataError(f"{name}: not a local file, and the hub dataset could not be loaded "
                        f"({str(exc).splitlines()[0][:100]}) — download it and point data.path at the file") from None
    return _read_table(loaded, name)


# ---------------------------------------------------------------- formats

def detect_format(records: list[Record], path: str) -> tuple[str, str]:
    """(format, reason) from the columns of the first rows."""
    keys: set[str] = set()
    for record in records[:20]:
        keys |= set(record.data)
    if "chosen" in keys and "rejected" in keys:
        return "preference", FORMAT_REASONS["preference"]
    if "messages" in keys:
        turns = [turn for record in records[:50] if isinstance(record.data.get("messages"), list)
                 for turn in record.data["messages"] if isinstance(turn, dict)]
        if any("tool_calls" in turn or "weight" in turn or "tool_call_id" in turn for turn in turns):
            return "messages", OPENAI_REASON
        return "messages", FORMAT_REASONS["messages"]
    if "conversations" in keys:
        first = next((r.data["conversations"] for r in records if isinstance(r.data.get("conversations"), list)
                      and r.data["conversations"]), None)
        if first and isinstance(first[0], dict) and "role" in first[0]:
            return "messages", "a 'conversations' list of {role, content} turns"
        return "sharegpt", FORMAT_REASONS["sharegpt"]
    if "instruction" in keys and "output" in keys:
        return "alpaca", FORMAT_REASONS["alpaca"]
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion", FORMAT_REASONS["prompt_completion"]
    if "text" in keys:
        return "text", FORMAT_REASONS["text"]
    raise DataError(f"{path}: cannot tell the format from the columns {sorted(keys)[:8]} — expected alpaca "
                    "(instruction/input/output), sharegpt (conversations), messages, prompt/completion, text, "
                    "or chosen/rejected; or set data.format")


def load_dataset_file(path: str | Path, data_format: str = "auto") -> LoadedDataset:
    """Read a dataset and settle its format (detected unless `data_format` names one)."""
    records = read_records(path)
    if data_format == "auto":
        found, reason = detect_format(records, str(path))
    else:
        found, reason = data_format, "set in the config (data.format)"
    notes = []
    if found == "preference":
        notes.append("preference data: SFT trains on the 'chosen' answers and ignores 'rejected'; "
                     "train.method=dpo trains on the pairs")
    return LoadedDataset(str(path), records, found, reason, notes)


def _text(value: Any, where: str, name: str) -> str:
    """A message content: a string, or an OpenAI-style list of content parts joined as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for index, part in enumerate(value):
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict) and part.get("type") in ("image", "image_url", "input_image", "audio"):
                raise DataError(f"{where}: {name}[{index}] is a {part['type']} part — loradeck trains text models; "
                                "remove non-text parts")
            else:
                raise DataError(f"{where}: {name}[{index}] is not a text part (expected {{\"type\": \"text\", "
                                "\"text\": ...}})")
        return "".join(parts)
    if value is None:
        raise DataError(f"{where}: '{name}' is missing or null — every sample needs it")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # CSV/Parquet numbers such as an answer "42"
    raise DataError(f"{where}: '{name}' must be text, got {type(value).__name__} {str(value)[:30]!r}")


def reply_messages(value: Any, where: str, name: str) -> list[dict[str, Any]]:
    """A preference row's `chosen` / `rejected` as turns: plain text (one assistant turn), one turn, or a list."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        return _turns_to_messages(value, where, name, sharegpt=True)
    return [{"role": "assistant", "content": _text(value, where, name)}]


def _require(record: Record, path: str, *names: str) -> None:
    missing = [name for name in names if name not in record.data or record.data[name] is None]
    if missing:
        raise DataError(f"{record.where(path)}: missing '{missing[0]}' — this format needs {', '.join(names)}")


def _turns_to_messages(turns: Any, where: str, name: str, *, sharegpt: bool) -> list[dict[str, Any]]:
    if not isinstance(turns, list):
        raise DataError(f"{where}: '{name}' must be a list of turns, got {type(turns).__name__}")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {name}[{index}] must be an object, got {type(turn).__name__}")
        role_key, content_key = ("from", "value") if sharegpt and "from" in turn else ("role", "content")
        if role_key not in turn:
            raise DataError(f"{where}: {name}[{index}] has no '{role_key}'")
        role = turn[role_key]
        if sharegpt and role_key == "from":
            if role not in SHAREGPT_ROLES:
                raise DataError(f"{where}: {name}[{index}]: unknown role '{role}' — use one of "
                                f"{', '.join(sorted(SHAREGPT_ROLES))}")
            role = SHAREGPT_ROLES[role]
        elif role not in MESSAGE_ROLES:
            mapped = SHAREGPT_ROLES.get(role)
            if mapped is None:
                raise DataError(f"{where}: {name}[{index}]: unknown role '{role}' — use system, user, assistant or "
                                "tool")
            role = mapped
        here = f"{name}[{index}]"
        message: dict[str, Any] = {"role": role}
        if role == "assistant" and turn.get("tool_calls") is not None:
            message["tool_calls"] = _tool_calls(turn["tool_calls"], where, f"{here}.tool_calls")
            content = turn.get(content_key)
            message["content"] = "" if content is None else _text(content, where, f"{here}.{content_key}")
        else:
            message["content"] = _text(turn.get(content_key), where, f"{here}.{content_key}")
        if role == "tool" and turn.get("tool_call_id") is not None:
            if not isinstance(turn["tool_call_id"], str):
                raise DataError(f"{where}: {here}.tool_call_id must be a string (the id of the call it answers)")
            message["tool_call_id"] = turn["tool_call_id"]
        if "weight" in turn:
            message.update(_weight(turn["weight"], role, where, here))
        messages.append(message)
    if not messages:
        raise DataError(f"{where}: '{name}' is an empty list — remove the row or add turns")
    return messages


def _tool_calls(value: Any, where: str, name: str) -> list[dict[str, Any]]:
    """OpenAI-style tool calls, validated, with JSON-string arguments parsed into objects (chat templates expect
    objects)."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: '{name}' must be a non-empty list of tool calls")
    calls = []
    for index, call in enumerate(value):
        here = f"{name}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise DataError(f"{where}: {here}.function.name is missing — each tool call needs "
                            "{\"type\": \"function\", \"function\": {\"name\": ..., \"arguments\": ...}}")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise DataError(f"{where}: {here}.function.arguments is not valid JSON — it must encode an "
                                "object of argument values") from None
        if not isinstance(arguments, dict):
            raise DataError(f"{where}: {here}.function.arguments must be a JSON object, got "
                            f"{type(arguments).__name__}")
        entry: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        calls.append(entry)
    return calls


def _weight(value: Any, role: str, where: str, name: str) -> dict[str, int]:
    """OpenAI's per-message `weight`: 1 trains an assistant turn (the default), 0 keeps it out of the loss."""
    if role != "assistant":
        raise DataError(f"{where}: {name}.weight is set on a '{role}' turn — only assistant turns carry a weight")
    if isinstance(value, bool) or value not in (0, 1):
        raise DataError(f"{where}: {name}.weight must be 0 (not trained) or 1 (trained), got {value!r}")
    return {"weight": 0} if value == 0 else {}


def turn_text(message: dict[str, Any]) -> str:
    """A turn as text: its content, then each tool call as one JSON line ({"name", "arguments"})."""
    if "tool_calls" not in message:
        return message["content"]
    calls = [json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False)
             for c in message.get("tool_calls") or ()]
    return "\n".join(part for part in (message["content"], *calls) if part)


def _tools(record: Record, where: str) -> list | None:
    tools = record.data.get("tools")
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise DataError(f"{where}: 'tools' is not valid JSON — it should list the tool schemas") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise DataError(f"{where}: 'tools' must be a list of tool schemas")
    return tools


def to_conversation(record: Record, data_format: str, path: str, system_prompt: str = "") -> Conversation:
    """One raw row as chat messages, validated; a DataError names the row and the problem."""
    where = record.where(path)
    row = record.data
    tools = None
    if data_format == "alpaca":
        _require(record, path, "instruction", "output")
        prompt = _text(row["instruction"], where, "instruction")
        extra = row.get("input")
        if extra not in (None, ""):
            prompt = f"{prompt}\n\n{_text(extra, where, 'input')}"
        messages = [{"role": "system", "content": _text(row["system"], where, "system")}] if row.get("system") else []
        for turn_index, pair in enumerate(row.get("history") or []):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise DataError(f"{where}: history[{turn_index}] must be a [prompt, answer] pair")
            messages += [{"role": "user", "content": _text(pair[0], where, f"history[{turn_index}][0]")},
                         {"role": "assistant", "content": _text(pair[1], where, f"history[{turn_index}][1]")}]
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": _text(row["output"], where, "output")}]
    elif data_format == "sharegpt":
        _require(record, path, "conversations")
        messages = _turns_to_messages(row["conversations"], where, "conversations", sharegpt=True)
        if row.get("system"):
            messages.insert(0, {"role": "system", "content": _text(row["system"], where, "system")})
        tools = _tools(record, where)
    elif data_format == "messages":
        key = "messages" if "messages" in row else "conversations"
        _require(record, path, key)
        messages = _turns_to_messages(row[key], where, key, sharegpt=False)
        tools = _tools(record, where)
    elif data_format == "prompt_completion":
        _require(record, path, "prompt", "completion")
        prompt, completion = row["prompt"], row["completion"]
        prompt_messages = (_turns_to_messages(prompt, where, "prompt", sharegpt=True) if isinstance(prompt, list)
                           and prompt and isinstance(prompt[0], dict) else
                           [{"role": "user", "content": _text(prompt, where, "prompt")}])
        completion_messages = (_turns_to_messages(completion, where, "completion", sharegpt=True)
                               if isinstance(completion, list) and completion and isinstance(completion[0], dict) else
                               [{"role": "assistant", "content": _text(completion, where, "completion")}])
        messages = prompt_messages + completion_messages
    elif data_format == "preference":
        _require(record, path, "chosen")
        prompt_key = next((k for k in ("conversations", "messages", "prompt") if k in row), None)
        if prompt_key is None:
            chosen = row["chosen"]
            if not (isinstance(chosen, list) and chosen):
                raise DataError(f"{where}: preference row without a prompt — add 'prompt' or 'conversations'")
            prompt_messages = []
        elif isinstance(row[prompt_key], list):
            prompt_messages = _turns_to_messages(row[prompt_key], where, prompt_key, sharegpt=True)
        else:
            prompt_messages = [{"role": "user", "content": _text(row[prompt_key], where, prompt_key)}]
        messages = prompt_messages + reply_messages(row["chosen"], where, "chosen")
        tools = _tools(record, where)
    elif data_format == "text":
        _require(record, path, "text")
        return Conversation(None, _text(row["text"], where, "text"), None, record)
    else:
        raise DataError(f"{path}: unknown data.format '{data_format}'")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant turn — nothing to learn from this row (add an answer or remove it)")
    return Conversation(messages, None, tools, record)


def to_conversations(dataset: LoadedDataset, system_prompt: str = "") -> list[Conversation]:
    """Every row of a loaded dataset as a Conversation (first bad row raises DataError)."""
    return [to_conversation(record, dataset.format, dataset.path, system_prompt) for record in dataset.records]


# ---------------------------------------------------------------- held-out split

def training_split(conversations: list, *, eval_path: str | Path = "", data_format: str = "auto",
                   system_prompt: str = "", eval_split: float = 0.1, seed: int = 42) -> tuple[list, list]:
    """(train, eval) conversations exactly as training takes them: every row trains and `eval_path`'s rows
    evaluate when it is set, else `split_eval` holds `eval_split` of the rows out."""
    if eval_path:
        return conversations, to_conversations(load_dataset_file(eval_path, data_format), system_prompt)
    return split_eval(conversations, eval_split, seed)


def split_eval(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic (train, held-out) split: `fraction` of the rows, at least one when fraction > 0."""
    import random

    if fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    count = min(len(items) - 1, max(1, round(len(items) * fraction)))
    held = set(order[:count])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


