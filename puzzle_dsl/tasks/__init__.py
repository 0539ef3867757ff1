"""Benchmark tasks: local task files as lm-eval tasks, and running lm-eval on a model in memory."""
