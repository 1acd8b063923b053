"""loradeck's headless training engine.

Nothing in this package imports Textual or Rich: the engine runs in detached
training processes, notebooks and scripts, and talks to the world through the
run directory it owns. Heavy libraries (torch, transformers, peft, trl) are
imported inside the functions that need them, so the CLI front door stays fast.
"""

__version__ = "0.1.0"
