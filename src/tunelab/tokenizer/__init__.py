"""Tokenizers: train a byte-level BPE tokenizer for a new model, and compare tokenizers on real text.

- `corpus.py`  texts streamed from text files, folders and tunelab data sources
- `train.py`   `train_tokenizer`: CJK-aware byte-level BPE, single digits, ChatML template, HF format
- `compare.py` `compare`: characters and bytes per token per language, table, JSON, chart
- `command.py` `tunelab tokenizer train|compare`
"""
