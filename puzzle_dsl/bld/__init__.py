"""Blockwise local distillation (PUZZLE.md section 2): build the block library.

- `init`: the paper's initialisations of child subblocks from the parent's weights (pure math)
- `loss`: normalized MSE
- `calibrate`: FFN channel contributions (for pruning-based FFN initialisation)
- `train`: the training loop (one parent pass per batch feeds every layer of a variant)
"""
