"""Datasets in: reading files, detecting formats, conversations, tokenization with the loss mask.

`readers` turns a file (JSON, JSONL, CSV, Parquet, a saved dataset) into
conversations with one-line errors naming file and record; `tokenize` renders
them through the model's chat template and builds the loss mask; `inspect`
lints a dataset before training; `prompts` builds prompt sets for chat and
evaluation. It may import `engine.errors`, `engine.config` and `engine.run`
(for the data paths a run recorded), never the model or training packages.
"""
