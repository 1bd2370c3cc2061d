"""tunelab: fine-tune, evaluate and compare small causal language models.

Light on import: nothing heavy (torch, transformers) is imported here; see cli.py.
"""
__version__ = "0.1.0"
