"""Data for distillation and evaluation.

- `prompts`: a built-in, diverse prompt set for corpora sampled from the parent.
- `generate`: batched sampling from the parent (KV cache), reproducible from a seed.
- `corpus`: sources -> mixture -> tokenise -> pack -> dedupe -> split -> .npy; `iter_batches`.
- `tasks`: local benchmark files in their public formats -> lm-eval task YAMLs.
"""
