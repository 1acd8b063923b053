"""`loradeck serve`: the same Textual app in a browser, through textual-serve, behind a token.

textual-serve has no authentication of its own; it is wrapped, not patched: a subclass adds one aiohttp
middleware that lets a request through only with the server's random token — in the URL (`?token=…`, which also
sets an HttpOnly, SameSite=Strict cookie) or in that cookie (the page's scripts, styles and websocket). Every
browser tab gets its own copy of the app, started as `python -m tui.cli` with the given runs folder.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import sys
from pathlib import Path

from aiohttp import web
from textual_serve.server import Server

COOKIE = "loradeck_token"
REFUSED = "loradeck serve: this address needs its token — open the full URL `loradeck serve` printed\n"


def app_command(runs_dir: str | Path, config: str | None = None) -> str:
    """The shell command textual-serve runs for each browser session."""
    words = [sys.executable, "-m", "tui.cli", "--runs-dir", str(Path(runs_dir).resolve())]
    if config:
        words += ["--config", str(Path(config).resolve())]
    return shlex.join(words)


def token_middleware(token: str):
    """An aiohttp middleware that refuses (403) every request without `token` in its query or cookie."""
    @web.middleware
    async def check(request: web.Request, handler):
        offered = request.query.get("token", "")
        if offered and secrets.compare_digest(offered, token):
            response = await handler(request)
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
            return response
        if secrets.compare_digest(request.cookies.get(COOKIE, ""), token):
            return await handler(request)
        return web.Response(status=403, text=REFUSED)
    return check


class TokenServer(Server):
    """textual-serve's Server with the token check in front of every route, and quiet: loradeck prints its own
    lines, textual-serve's go to the log."""

    def __init__(self, command: str, *, host: str, port: int, token: str, title: str = "loradeck"):
        super().__init__(command, host=host, port=port, title=title)
        self.token = token

    def initialize_logging(self) -> None:
        """textual-serve's log lines go where loradeck routes library output (the log file, or --debug)."""
        logging.getLogger("textual-serve").propagate = True

    async def on_startup(self, app: web.Application) -> None:
        """No banner: `loradeck serve` has printed the URL."""

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(token_middleware(self.token))
        return app


def new_token() -> str:
    """A random URL-safe token (128 bits)."""
    return secrets.token_urlsafe(16)
