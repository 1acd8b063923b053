"""What the TUI remembers between launches, in `$XDG_CONFIG_HOME/loradeck/`: the theme (`tui.json`) and the
config the New run form last saved or started (`last-run.toml`). Both files are untrusted: a broken or unknown one
is ignored, and a folder that cannot be written costs nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path


def settings_folder() -> Path:
    """`$XDG_CONFIG_HOME/loradeck` (default `~/.config/loradeck`)."""
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(root) / "loradeck"


def settings_file() -> Path:
    """The theme's file: `tui.json`."""
    return settings_folder() / "tui.json"


def last_form_config_file() -> Path:
    """The New run form's last config: `last-run.toml`."""
    return settings_folder() / "last-run.toml"


def saved_theme(known) -> str | None:
    """The theme chosen last time, when the settings file names one this app has."""
    try:
        name = json.loads(settings_file().read_text(encoding="utf-8")).get("theme")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name in known else None


def save_theme(name: str) -> None:
    """Remember the theme for the next launch."""
    path = settings_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"theme": name}), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass


def remembered_form_config():
    """The RunConfig the New run form last saved or started, or None (none yet, unreadable, or no longer valid —
    e.g. its dataset was deleted)."""
    from engine.config import load_config
    from engine.errors import LoradeckError

    path = last_form_config_file()
    if not path.is_file():
        return None
    try:
        return load_config(str(path))
    except (LoradeckError, OSError, ValueError):
        return None


def remember_form_config(config) -> None:
    """Keep `config` as the form's starting point next time (paths written relative to the settings folder, so they
    resolve as the form meant them)."""
    from engine.config import save_config

    path = last_form_config_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_config(config, path, portable_paths=True)
    except OSError:
        pass
