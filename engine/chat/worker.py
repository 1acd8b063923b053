"""The chat generation process: holds the models, answers requests on stdin with events on stdout.

It runs apart from the TUI so a CUDA error, an out-of-memory or a crash in a
native library never takes the interface down: errors inside a request are
reported and the process keeps serving; if the process dies, the client sees
end-of-file and can start a new one.

Protocol, one JSON object per line.
Requests:  {"op": "load", "base", "adapters", "load_in_4bit"} · {"op": "add_adapter", "path"}
           {"op": "generate", "id", "panes": [{"label", "messages"}], "settings"} · {"op": "cancel"} · {"op": "quit"}
Events:    {"event": "status", "message"} · {"event": "ready", "labels", "adapters", "memory", "base"}
           {"event": "adapter", "label", "path", "memory"} · {"event": "text", "id", "pane", "text"}
           {"event": "done", "id", "answers", "seconds", "first_token_seconds", "tokens_per_second"}
           {"event": "error", "id"?, "message", "fatal"}
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from typing import Any, TextIO

from engine.library_output import leave_bitsandbytes_unimported, route_library_output


class _EventSink:
    """Writes protocol events to the real stdout; anything libraries print goes to stderr instead."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, ensure_ascii=False)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _describe_failure(exc: BaseException) -> str:
    from engine.errors import LoradeckError

    if isinstance(exc, LoradeckError):
        return str(exc)
    name = type(exc).__name__
    if "OutOfMemory" in name or "out of memory" in str(exc).lower():
        return f"out of memory while generating ({_one_line(exc)}) — lower max new tokens or compare fewer panes"
    return f"generation failed: {_one_line(exc)}"


MAX_PANES = 8
MAX_MESSAGES = 1000
ROLES = ("system", "user", "assistant")
SETTING_TYPES = {"max_new_tokens": int, "temperature": (int, float), "top_p": (int, float), "seed": int}


def parse_generate(request: dict[str, Any]):
    """The panes and settings of a `generate` request; ModelError naming the first thing wrong with it."""
    from engine.chat.generation import GenerationSettings, Pane
    from engine.errors import ModelError

    panes = request.get("panes")
    if not isinstance(panes, list) or not 1 <= len(panes) <= MAX_PANES:
        raise ModelError(f"a generate request needs \"panes\": a list of 1–{MAX_PANES} panes")
    parsed = []
    for number, pane in enumerate(panes, 1):
        if not isinstance(pane, dict) or not isinstance(pane.get("label"), str):
            raise ModelError(f"pane {number}: needs a \"label\" (text) and \"messages\"")
        messages = pane.get("messages")
        if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
            raise ModelError(f"pane {number}: \"messages\" must be a list of 1–{MAX_MESSAGES} messages")
        for turn, message in enumerate(messages, 1):
            if (not isinstance(message, dict) or message.get("role") not in ROLES
                    or not isinstance(message.get("content"), str) or set(message) - {"role", "content"}):
                raise ModelError(f"pane {number}, message {turn}: must be {{\"role\": system|user|assistant, "
                                 "\"content\": text}")
        parsed.append(Pane(pane["label"], [{"role": m["role"], "content": m["content"]} for m in messages]))
    settings = request.get("settings") or {}
    if not isinstance(settings, dict):
        raise ModelError("\"settings\" must be an object")
    for key, value in settings.items():
        kinds = SETTING_TYPES.get(key)
        if kinds is None:
            raise ModelError(f"unknown setting {key!r} — known: {', '.join(SETTING_TYPES)}")
        if isinstance(value, bool) or not isinstance(value, kinds) or value != value or value in (float("inf"),
                                                                                                  float("-inf")):
            raise ModelError(f"setting {key} = {value!r} is not a finite number of the right kind")
    if not 0 <= settings.get("seed", 0) < 2 ** 63:
        raise ModelError("setting seed must be between 0 and 2^63 - 1")
    return parsed, GenerationSettings(**settings)


def serve(requests: TextIO, emit: _EventSink) -> None:
    """Answer requests until `quit` or end of input. `cancel` takes effect within one token, or within one
    prompt chunk while a long prompt is still being read."""
    from engine.chat.generation import ChatModels
    from engine.errors import LoradeckError, ModelError

    pending: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def read_requests() -> None:
        for line in requests:
            line = line.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError:
                emit("error", message=f"unreadable request: {line[:80]}", fatal=False)
                continue
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                emit("error", message=f"not a request (an object with an \"op\"): {line[:80]}", fatal=False)
                continue
            if request.get("op") == "cancel":
                cancel.set()
            else:
                pending.put(request)
        pending.put({"op": "quit"})

    threading.Thread(target=read_requests, daemon=True).start()
    models: ChatModels | None = None
    while True:
        request = pending.get()
        op = request.get("op")
        if op == "quit":
            return
        try:
            if op == "load":
                if not isinstance(request.get("base"), str) or not isinstance(request.get("adapters") or [], list) \
                        or not all(isinstance(path, str) for path in request.get("adapters") or []):
                    raise ModelError("a load request needs \"base\" (a model name or folder) and \"adapters\" "
                                     "(a list of adapter folders)")
                leave_bitsandbytes_unimported(bool(request.get("load_in_4bit")))
                emit("status", message=f"loading {request['base']}…")
                models = ChatModels(request["base"], [], load_in_4bit=bool(request.get("load_in_4bit")),
                                    progress=lambda message: emit("status", message=message))
                for path in request.get("adapters") or []:
                    emit("status", message=f"loading adapter {path}…")
                    models.add_adapter(path)
                emit("ready", base=request["base"], labels=models.labels,
                     adapters={label: str(path) for label, path in models.adapter_paths.items()},
                     memory=models.memory())
            elif models is None:
                emit("error", id=request.get("id"), message="no model loaded yet", fatal=False)
            elif op == "add_adapter":
                if not isinstance(request.get("path"), str):
                    raise ModelError("an add_adapter request needs \"path\" (an adapter folder)")
                label = models.add_adapter(request["path"])
                emit("adapter", label=label, path=str(models.adapter_paths[label]), memory=models.memory())
            elif op == "generate":
                cancel.clear()
                request_id = request.get("id")
                panes, settings = parse_generate(request)
                result = models.answer(panes, settings, should_stop=cancel.is_set,
                                       on_text=lambda pane, text: emit("text", id=request_id, pane=pane, text=text))
                emit("done", id=request_id, answers=[vars(a) for a in result.answers],
                     seconds=round(result.seconds, 3), first_token_seconds=result.first_token_seconds,
                     tokens_per_second=round(result.tokens_per_second, 2))
            else:
                emit("error", message=f"unknown request '{op}'", fatal=False)
        except LoradeckError as exc:
            emit("error", id=request.get("id"), message=str(exc), fatal=op == "load")
        except Exception as exc:  # CUDA errors, OOM, library bugs: report, free what we can, keep serving
            emit("error", id=request.get("id"), message=_describe_failure(exc), fatal=op == "load")
            _release_cuda_memory()


def _release_cuda_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # nothing more to free; the next request reports its own error
        pass


def main() -> None:
    """Entry point of `python -m engine.chat.worker`."""
    route_library_output(None)  # stderr is the client's log file for this process
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the protocol
    serve(sys.stdin, _EventSink(protocol))


if __name__ == "__main__":
    main()
