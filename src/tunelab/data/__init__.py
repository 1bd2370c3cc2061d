"""Data: formats -> conversations -> cleaning -> chat-template rendering (ids + labels) -> batches."""
