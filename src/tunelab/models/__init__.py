"""Models and tokenizers: one loader for hub ids, local directories and the built-in offline models."""
