"""The distillation corpus: sources, sampling from the parent, packing and split."""
