"""The run directory contract: what a training process writes and every client reads.

Owns the layout of `runs/<run-id>/` (`paths`), the append-only event log
(`events`), one summary of a run and the one rule for its liveness (`status`),
the incremental history a monitor follows (`history`), the control channel
(`control`), training-health alerts (`alerts`) and GPU/host telemetry
(`telemetry`). It imports only `engine.errors` and `engine.config`, and no heavy
library at import time, so the TUI, the CLI and the trainer all share it.
"""
