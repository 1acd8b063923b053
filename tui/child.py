"""A `loradeck … --progress-json` child process: the real CLI does the heavy work (the TUI never loads torch)
while its progress lines reach the screen."""

from __future__ import annotations

import json
import subprocess
from typing import Any, Callable


class ProgressChild:
    """One child command whose JSON progress lines on stderr become `on_update` calls on the UI thread."""

    def __init__(self, command: list[str]):
        self.command = command
        self.process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Terminate the child when it is still running (its screen is closing)."""
        if self.running:
            self.process.terminate()

    def run(self, app, on_update: Callable[[dict[str, Any]], None],
            on_finished: Callable[[int, str, str], None]) -> None:
        """Run the child to the end (call from a worker thread): each progress line goes to `on_update`, then
        `on_finished(exit code, stdout, the last non-progress stderr line)`, both on the UI thread."""
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        stdin=subprocess.DEVNULL)
        last_error = ""
        for line in self.process.stderr:
            try:
                update = json.loads(line)
            except ValueError:
                last_error = line.strip() or last_error
                continue
            if isinstance(update, dict) and "fraction" in update:
                app.call_from_thread(on_update, update)
        output = self.process.stdout.read()
        code = self.process.wait()
        app.call_from_thread(on_finished, code, output, last_error)
