"""Base models and adapters: finding, converting and loading them, and telling them apart.

`loading` resolves a model name (the bundled GGUF default, a cached conversion,
a local folder or a hub id), loads tokenizers and models, and picks the device
and dtype; `backends` builds the LoRA model with plain transformers + peft or
unsloth; `adapters` turns a run directory, checkpoint, bundle or PEFT folder
into the adapter folder behind it; `fingerprint` identifies a base model so a
resumed run refuses a different one. It may import `engine.errors`,
`engine.config` and `engine.run`.
"""
