"""Training: one explicit loop (loop.py) and its parts."""
