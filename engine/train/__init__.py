"""The training process: TRL's SFTTrainer with loradeck's callbacks, owning one run directory.

`run` is the process's lifecycle (load, train, save, finish) and `callback`
its voice in the run directory; `sft` holds the trainer subclass and its
config; `batches` the seed-determined sampler and collator; `session` the clock
that stops before a deadline; `checkpoint` and `handoff` the atomic saves and
resume bundles; `preflight` the will-it-fit check; `launcher` and `worker`
start and host the detached process. It may import every other engine package.
"""
