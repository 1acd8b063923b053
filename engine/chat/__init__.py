"""Talking to base and adapted models: batched generation over one copy of the base weights.

`generation` answers many panes (base and adapters) in one batched `generate`;
`worker` runs it in a separate process and `client` (torch-free, imported by the
TUI) talks to that process; `rating` keeps blind A/B verdicts, the tally and the
preference pairs they yield. It may import `engine.errors`, `engine.config`,
`engine.run`, `engine.data` and `engine.models`.
"""
