"""`loradeck serve`: the TUI in a browser (notebooks, machines without SSH)."""

from __future__ import annotations

import sys


def add_parsers(sub) -> None:
    """The `serve` parser."""
    serve = sub.add_parser("serve", help="the TUI in a browser, behind a token (notebooks)",
                           description="Serve the loradeck TUI over HTTP through textual-serve: every browser tab "
                                       "gets its own copy of the app. A random token in the printed URL is "
                                       "required; bound to this machine only unless --host says otherwise.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--public-url", default=None,
                       help="the address browsers reach the server by, when a proxy (a notebook's port proxy) "
                            "stands in front of it")


def _cmd_serve(args) -> int:
    from engine.errors import ConfigError
    from tui.serve import TokenServer, app_command, new_token

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: not a TCP port — use 1-65535, e.g. --port 8000")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this port and has the URL controls your "
              "runs; prefer an SSH tunnel or the notebook's proxy to 127.0.0.1", file=sys.stderr)
    import socket

    try:  # before printing a URL that would not answer
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as exc:
        raise ConfigError(f"--port {args.port}: cannot listen on {args.host} ({exc.strerror or exc}) — pick "
                          "another port with --port") from None
    token = new_token()
    server = TokenServer(app_command(args.runs_dir, args.config), host=args.host, port=args.port, token=token)
    if args.public_url:
        server.public_url = args.public_url.rstrip("/")
    shown = args.public_url.rstrip("/") if args.public_url else f"http://{args.host}:{args.port}"
    print(f"loradeck serve: open {shown}/?token={token}\n  runs: {args.runs_dir} · Ctrl+C stops the server "
          "(training runs keep going)", flush=True)
    try:
        server.serve()
    except OSError as exc:
        raise ConfigError(f"--port {args.port}: cannot listen on {args.host} ({exc.strerror or exc}) — pick "
                          "another port with --port") from None
    return 0


COMMANDS = {"serve": _cmd_serve}
