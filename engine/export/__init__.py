"""Export: a trained adapter turned into models people run elsewhere, each file proven to work.

`plan_export` checks the inputs (adapter, base, GGUF types, chat template, disk room) before anything heavy;
`run_export` merges the adapter into an un-quantized base (never into 4-bit weights), writes GGUF files in pure
Python with the `gguf` package (K-quants through `llama-quantize` when it is on PATH), translates the chat
template into an Ollama Modelfile, and loads every file back with plain transformers to compare logits and
greedy answers with the model it came from. EXPORT.md and export.json record the files and every check.
"""
