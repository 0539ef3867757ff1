"""Evaluation: KL / perplexity, lm-eval tasks, generation benchmark."""
