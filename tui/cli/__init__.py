"""The `loradeck` command: `main` builds the parser and dispatches; one module per command group.

`main` holds the parser, the dispatch table and the one-line error rule;
`runs` the commands that start and steer training runs (train, resume, attach,
extend, preflight, status, stop, save); `chat`, `inspect` and `models` their own
commands. Only the standard library is imported at module scope, so
`loradeck --help` answers at once; each command imports the engine when it runs.
"""
