"""Evaluation: rollouts, answer grading, perplexity, text metrics, efficiency."""
