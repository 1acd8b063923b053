"""Stylesheets and colour themes. Widgets use theme variables only, never literal colours."""

from pathlib import Path

from textual.theme import Theme

STYLESHEET = Path(__file__).with_name("loradeck.tcss")

LORADECK_DARK = Theme(
    name="loradeck-dark",
    primary="#5fafff",
    secondary="#af87ff",
    accent="#ffaf5f",
    warning="#ffb000",
    error="#ff5f5f",
    success="#5fd787",
    foreground="#e4e4e4",
    background="#101418",
    surface="#182028",
    panel="#223040",
    dark=True,
)

LORADECK_LIGHT = Theme(
    name="loradeck-light",
    primary="#005fd7",
    secondary="#5f00af",
    accent="#af5f00",
    warning="#a06000",
    error="#c00000",
    success="#007a33",
    foreground="#1c1c1c",
    background="#fbfbf8",
    surface="#eeeeea",
    panel="#dfe6ee",
    dark=False,
)

# Pure black and white with saturated signal colours: readable on any terminal
# palette and for users who need maximal contrast.
LORADECK_HIGH_CONTRAST = Theme(
    name="loradeck-high-contrast",
    primary="#00ffff",
    secondary="#ffff00",
    accent="#ff00ff",
    warning="#ffff00",
    error="#ff0000",
    success="#00ff00",
    foreground="#ffffff",
    background="#000000",
    surface="#000000",
    panel="#1a1a1a",
    dark=True,
)

THEMES = (LORADECK_DARK, LORADECK_LIGHT, LORADECK_HIGH_CONTRAST)
DEFAULT_THEME = LORADECK_DARK.name
