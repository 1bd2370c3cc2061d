"""Serving a trained model: terminal chat, an OpenAI-compatible HTTP server, and LoRA merge/export.

    tunelab chat MODEL|RUN_DIR            # chat.py: multi-turn chat in the terminal (or piped stdin)
    tunelab serve MODEL|RUN_DIR           # server.py: /v1/chat/completions, /v1/models, /health
    tunelab export RUN_DIR --output DIR   # export.py: adapter merged into a plain transformers model

Chat and serve share `engine.py`: prompts from the training renderer, one generation worker,
streamed text with stop strings. Importing this package does not import torch.
"""
