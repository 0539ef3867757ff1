"""Replace-1-block scoring and block influence."""
