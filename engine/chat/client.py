"""Client side of the chat worker process (no torch here: the TUI imports this).

`ChatWorkerClient` starts `python -m engine.chat.worker`, sends requests and
calls `on_event(dict)` from a reader thread for every event the worker writes.
When the process ends unexpectedly it reports an `exited` event with the last
line the worker wrote to stderr; `restart()` starts a fresh one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from engine import SOURCE_ROOT




class ChatWorkerClient:
    """A running chat worker process and the thread that reads its events."""

    def __init__(self, on_event: Callable[[dict[str, Any]], None]):
        self.on_event = on_event
        self.process: subprocess.Popen | None = None
        self.stderr_path: Path | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self.load_request: dict[str, Any] | None = None

    def start(self, base: str, adapters: list[str] = (), *, load_in_4bit: bool = False) -> None:
        """Start the worker and ask it to load `base` plus `adapters`."""
        self.load_request = {"op": "load", "base": base, "adapters": [str(a) for a in adapters],
                             "load_in_4bit": load_in_4bit}
        self._spawn()

    def _spawn(self) -> None:
        handle, name = tempfile.mkstemp(prefix="loradeck-chat-", suffix=".log")
        self.stderr_path = Path(name)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
        self._stopping = False
        self.process = subprocess.Popen([sys.executable, "-m", "engine.chat.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=handle, text=True, encoding="utf-8",
                                        bufsize=1, env=env, start_new_session=True)
        os.close(handle)
        threading.Thread(target=self._read_events, args=(self.process,), daemon=True).start()
        self.send(self.load_request)

    def _read_events(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "adapter":  # a restarted worker loads it again
                self.load_request["adapters"].append(event["path"])
            self.on_event(event)
        returncode = process.wait()
        if process is self.process and not self._stopping:
            self.on_event({"event": "exited", "returncode": returncode, "message": self._last_stderr_line()})

    def _last_stderr_line(self) -> str:
        try:
            lines = [line for line in self.stderr_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, request: dict[str, Any]) -> bool:
        """Write one request; False when the worker is not running."""
        with self._lock:
            if not self.alive:
                return False
            try:
                self.process.stdin.write(json.dumps(request, ensure_ascii=False) + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, OSError):
                return False
        return True

    def generate(self, request_id: int, panes: list[dict[str, Any]], settings: dict[str, Any]) -> bool:
        """Ask for one batched answer of `panes` ([{label, messages}])."""
        return self.send({"op": "generate", "id": request_id, "panes": panes, "settings": settings})

    def add_adapter(self, path: str) -> bool:
        return self.send({"op": "add_adapter", "path": str(path)})

    def cancel(self) -> bool:
        return self.send({"op": "cancel"})

    def restart(self) -> None:
        """Stop the current process (if any) and start a new one with the same models."""
        self.stop()
        self._spawn()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to quit; kill it if it does not within `timeout` seconds."""
        process, self._stopping = self.process, True
        if process is None:
            return
        if process.poll() is None:
            self.send({"op": "cancel"})
            self.send({"op": "quit"})
            try:
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.stderr_path is not None:
            self.stderr_path.unlink(missing_ok=True)
