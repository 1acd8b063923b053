"""The session clock: free-tier GPU sessions end after N hours; save before they do."""

from __future__ import annotations

from engine.config import RunConfig
from engine.trainer import TrainingRun


def run_class_for(config: RunConfig) -> type[TrainingRun]:
    """The TrainingRun flavour a config needs."""
    return TrainingRun
