"""A run on another machine, followed over the system `ssh` (keys, agent, ~/.ssh/config, jump hosts as the user
has them) into a local mirror directory the TUI reads like any run directory.

One ssh connection runs `loradeck tail RUN --from OFFSET` on the remote side: it streams the run's events.jsonl
from a byte offset (whole lines only), a heartbeat saying whether the trainer is alive, and carries control
commands back (`save`, `stop`, `extend`). The follower appends exactly the bytes it received to the mirror's
events.jsonl, so a reconnect resumes from the mirror's size: no event twice, none lost. Losing the network only
shows "reconnecting…" here; the remote run never notices.

Mirror layout: `events.jsonl`, `config.toml` (the remote's), `remote.json` (host, path, remote pid, connection
state, last contact) and `outbox/` (commands queued for the remote run; `engine.run.control.send_command`
writes there for a mirror).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from engine.errors import RunError
from engine.run.mirror import OUTBOX, REMOTE_FILE, read_remote, remote_pid

CONTROL_PREFIX = b"#loradeck "  # lines of the tail protocol that are not events
HEARTBEAT_S = 1.0
RECONNECT_DELAYS_S = (1, 2, 4, 8)
REMOTE_SPEC = re.compile(r"^(?P<host>(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9._-]+):(?P<path>.+)$")


def parse_remote(text: str) -> tuple[str, str] | None:
    """(host, path) of `user@host:path` / `host:path`; None for a local path (one that exists, or has no colon
    before its first slash)."""
    if Path(text).exists():
        return None
    match = REMOTE_SPEC.match(text)
    if not match or "/" in match.group("host"):
        return None
    return match.group("host"), match.group("path")


def mirror_dir(host: str, path: str) -> Path:
    """Where a remote run is mirrored: `$XDG_CACHE_HOME/loradeck/remote/<host>/<run name>-<hash of the path>`."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loradeck" / "remote"
    safe_host = re.sub(r"[^A-Za-z0-9._@-]", "_", host)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path.rstrip("/")).name or "run")
    return root / safe_host / f"{name}-{hashlib.sha256(path.encode()).hexdigest()[:10]}"


class RemoteFollower:
    """Keeps a mirror of `host:path` current over `ssh_command` (default `ssh`), reconnecting from the mirror's
    size whenever the connection drops, and forwards the mirror's outbox to the remote run."""

    def __init__(self, host: str, path: str, *, ssh_command: str = "ssh", mirror: Path | None = None):
        self.host, self.path = host, path
        self.ssh = shlex.split(ssh_command) or ["ssh"]
        self.mirror = Path(mirror) if mirror else mirror_dir(host, path)
        self.process: subprocess.Popen | None = None
        self.state = "connecting"
        self.error: str | None = None
        self.stopping = threading.Event()
        self.hello = threading.Event()
        self.connections = 0
        self.thread = threading.Thread(target=self._run, name="loradeck-remote", daemon=True)
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self, wait_s: float = 30.0) -> Path:
        """Start following; returns the mirror once the remote has answered. RunError (one line) when the first
        connection fails: ssh's own last line, or loradeck missing on the remote."""
        self.mirror.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.mirror / OUTBOX).mkdir(exist_ok=True, mode=0o700)
        (self.mirror / "events.jsonl").touch()
        self._write_state(pid=remote_pid(self.mirror))
        self.thread.start()
        if wait_s <= 0:  # one of many (a remote runs folder): it connects, or says so in its progress line
            return self.mirror
        if not self.hello.wait(wait_s) and self.error is None:
            self.error = f"{self.host}: no answer in {wait_s:.0f} s"
        if not self.hello.is_set():
            self.stop()
            raise RunError(f"{self.host}:{self.path}: {self.error}")
        return self.mirror

    def stop(self) -> None:
        """Stop following (the remote run is not touched)."""
        self.stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)

    def drop_connection(self) -> None:
        """End the current connection as a network failure would (the follower reconnects)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()

    # ------------------------------------------------------------------ the connection
    def _command(self) -> list[str]:
        offset = (self.mirror / "events.jsonl").stat().st_size
        remote = shlex.join(["loradeck", "tail", self.path, "--from", str(offset)])
        return [*self.ssh, self.host, remote]

    def _run(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            self._connect_once()
            if self.stopping.is_set():
                break
            if time.monotonic() - started > 10:
                attempt = 0
            self._write_state(state="reconnecting")
            delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
            attempt += 1
            self.stopping.wait(delay)

    def _connect_once(self) -> None:
        try:
            process = subprocess.Popen(self._command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            self.error = f"cannot run {self.ssh[0]!r}: {exc.strerror or exc}"
            return
        self.process = process
        self.connections += 1
        forwarder = threading.Thread(target=self._forward_outbox, args=(process,), daemon=True)
        forwarder.start()
        events = open(self.mirror / "events.jsonl", "ab")
        try:
            for line in process.stdout:
                if not line.endswith(b"\n"):
                    break  # a connection cut mid-line: the next one resends that line whole
                if line.startswith(CONTROL_PREFIX):
                    self._on_control(line[len(CONTROL_PREFIX):])
                else:
                    events.write(line)
                    events.flush()
        finally:
            events.close()
            process.stdout.close()
            code = process.wait()
            if not self.hello.is_set():
                self.error = self._failure(code, process.stderr.read().decode(errors="replace"))
            process.stderr.close()

    def _failure(self, code: int, stderr: str) -> str:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        if code == 127 or any("command not found" in line or "No such file" in line and "loradeck" in line
                              for line in lines):
            return "loradeck is not installed there (or not on the PATH of a non-interactive shell) — install it " \
                   "on the remote machine: pip install loradeck"
        return lines[-1] if lines else f"{self.ssh[0]} exited with code {code}"

    def _on_control(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "error" in message and not self.hello.is_set():
            self.error = str(message["error"])[:300]
            return
        if isinstance(message.get("config"), str) and message["config"]:
            (self.mirror / "config.toml").write_text(message["config"], encoding="utf-8")
        if "alive" in message:
            pid = message.get("pid")
            self._write_state(state="connected", pid=pid if message.get("alive") and isinstance(pid, int) else None)
            self.hello.set()

    def _forward_outbox(self, process: subprocess.Popen) -> None:
        outbox = self.mirror / OUTBOX
        while process.poll() is None and not self.stopping.is_set():
            for file in sorted(outbox.glob("*.json")):
                try:
                    line = json.dumps(json.loads(file.read_text(encoding="utf-8"))) + "\n"
                    process.stdin.write(line.encode())
                    process.stdin.flush()
                except (OSError, ValueError):
                    break  # the connection went: the command stays queued for the next one
                file.unlink(missing_ok=True)
            time.sleep(0.1)

    def _write_state(self, **changes: Any) -> None:
        with self.lock:
            data = read_remote(self.mirror) or {}
            data.update(host=self.host, path=self.path, **changes)
            if changes.get("state") == "connected":
                data["contact_at"] = time.time()
            if "state" in changes:
                self.state = changes["state"]
            tmp = self.mirror / (REMOTE_FILE + ".tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            tmp.replace(self.mirror / REMOTE_FILE)


def connection_line(run_dir: str | Path, last_event_at: float | None, now: float | None = None) -> str | None:
    """'reconnecting… (last event 42s ago)' for a mirror that lost its connection; None when connected or local."""
    data = read_remote(run_dir)
    if not data or data.get("state") != "reconnecting":
        return None
    from engine.config import format_duration

    age = f" (last event {format_duration((now or time.time()) - last_event_at)} ago)" if last_event_at else ""
    return f"reconnecting to {data.get('host')}…{age}"


def serve_tail(run_dir: str | Path, offset: int, out, commands_in) -> int:
    """The remote side (`loradeck tail RUN --from OFFSET`): the run's config and liveness first, then every whole
    event line from `offset` as it is appended, a heartbeat each second, and control commands read from
    `commands_in` (one JSON object a line) queued for the trainer. Returns when the client goes away."""
    from engine.run.control import send_command
    from engine.run.paths import require_run_dir
    from engine.run.status import trainer_pid

    paths = require_run_dir(run_dir)
    gone = threading.Event()

    def say(message: dict[str, Any]) -> None:
        out.write(CONTROL_PREFIX + json.dumps(message).encode() + b"\n")
        out.flush()

    def obey() -> None:
        for raw in commands_in:
            try:
                command = json.loads(raw)
                name = command.pop("command")
                send_command(paths.root, str(name), **command)
                reply = {"ack": name}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                reply = {"refused": f"not a command: {exc}"}
            except RunError as exc:
                reply = {"refused": str(exc)}
            try:
                say(reply)
            except (OSError, ValueError):
                break
        gone.set()

    threading.Thread(target=obey, daemon=True).start()
    config = paths.config.read_text(encoding="utf-8") if paths.config.is_file() else ""
    try:
        pid = trainer_pid(paths.root)
        say({"config": config, "alive": pid is not None, "pid": pid})
        last_beat = time.monotonic()
        while not gone.is_set():
            try:
                with open(paths.events, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read(4 << 20)
            except OSError:
                chunk = b""
            whole = chunk[:chunk.rfind(b"\n") + 1] if b"\n" in chunk else b""
            if whole:
                out.write(whole)
                out.flush()
                offset += len(whole)
            if time.monotonic() - last_beat >= HEARTBEAT_S:
                pid = trainer_pid(paths.root)
                say({"alive": pid is not None, "pid": pid, "offset": offset})
                last_beat = time.monotonic()
            if not whole:
                time.sleep(0.2)
    except (BrokenPipeError, ValueError, OSError):
        pass  # the client went away
    return 0


def list_runs(runs_dir: str | Path) -> list[str]:
    """The names of the run directories in `runs_dir` (the remote side of a remote runs folder)."""
    folder = Path(runs_dir).expanduser()
    if not folder.is_dir():
        raise RunError(f"{runs_dir}: no such runs folder")
    return sorted(child.name for child in folder.iterdir() if (child / "events.jsonl").is_file())


class RemoteRunsFolder:
    """Home on a runs folder of another machine: its runs listed over ssh (`loradeck tail RUNS --list`) every
    `every_s` seconds, each followed into a mirror under one local folder that Home reads as a runs folder."""

    def __init__(self, host: str, path: str, *, ssh_command: str = "ssh", every_s: float = 10.0):
        self.host, self.path, self.ssh_command = host, path, ssh_command
        self.root = mirror_dir(host, path)
        self.every_s = every_s
        self.followers: dict[str, RemoteFollower] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._relist, name="loradeck-remote-runs", daemon=True)

    def names(self) -> list[str]:
        """The remote folder's run names; RunError (one line) when ssh or the remote fails."""
        command = [*shlex.split(self.ssh_command), self.host, shlex.join(["loradeck", "tail", self.path, "--list"])]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RunError(f"{self.host}:{self.path}: {exc}") from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            if done.returncode == 127:
                raise RunError(f"{self.host}: loradeck is not installed there (or not on the PATH of a "
                               "non-interactive shell) — install it on the remote machine: pip install loradeck")
            raise RunError(f"{self.host}:{self.path}: {lines[-1] if lines else f'exit code {done.returncode}'}")
        try:
            names = json.loads(done.stdout)
        except ValueError:
            raise RunError(f"{self.host}:{self.path}: the remote answered something else than a run list") from None
        return [n for n in names if isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9._-]+", n)]

    def start(self) -> Path:
        """List once (RunError when that fails), follow every run, keep listing; returns the local folder."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.root / (REMOTE_FILE + ".tmp")
        tmp.write_text(json.dumps({"host": self.host, "path": self.path, "folder": True}), encoding="utf-8")
        tmp.replace(self.root / REMOTE_FILE)
        self._follow(self.names())
        self.thread.start()
        return self.root

    def _follow(self, names: list[str]) -> None:
        for name in names:
            if name not in self.followers:
                follower = RemoteFollower(self.host, f"{self.path.rstrip('/')}/{name}", ssh_command=self.ssh_command,
                                          mirror=self.root / name)
                follower.start(wait_s=0)
                self.followers[name] = follower

    def _relist(self) -> None:
        while not self.stopping.wait(self.every_s):
            try:
                self._follow(self.names())
            except RunError:
                pass  # the network is gone: every follower says so; the next listing tries again

    def stop(self) -> None:
        """Stop listing and following (the remote runs are not touched)."""
        self.stopping.set()
        for follower in self.followers.values():
            follower.stop()
