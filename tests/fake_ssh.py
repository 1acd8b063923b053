"""Stands in for `ssh HOST COMMAND` in tests: runs COMMAND on this machine (`loradeck` → this checkout's CLI), so
the remote-attach transport is exercised without a server."""

import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    words = shlex.split(sys.argv[2])  # argv[1] is the host
    if words[0] == "loradeck":
        words = [sys.executable, "-m", "tui.cli", *words[1:]]
    os.chdir(REPO)
    os.execv(words[0], words)
