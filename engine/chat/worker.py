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


def serve(requests: TextIO, emit: _EventSink) -> None:
    """Answer requests until `quit` or end of input. `cancel` takes effect within one token."""
    from engine.chat.generation import ChatModels, GenerationSettings, Pane
    from engine.errors import LoradeckError

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
                label = models.add_adapter(request["path"])
                emit("adapter", label=label, path=str(models.adapter_paths[label]), memory=models.memory())
            elif op == "generate":
                cancel.clear()
                request_id = request.get("id")
                settings = GenerationSettings(**(request.get("settings") or {}))
                panes = [Pane(p["label"], p["messages"]) for p in request["panes"]]
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
