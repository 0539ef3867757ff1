"""Global knowledge distillation."""
