"""Blockwise local distillation (PUZZLE.md section 2): build the block library.

- `init`: the paper's initialisations of child subblocks from the parent's weights (pure math)
- `least_squares`: ridge least squares from streamed float64 normal equations (pure math)
- `refit`: the closed-form init: each block's output linear fitted on calibration tokens
- `loss`: normalized MSE
- `calibrate`: FFN channel contributions (for pruning-based FFN initialisation)
- `train`: the training loop (one parent pass per batch feeds every layer of a variant)
"""
