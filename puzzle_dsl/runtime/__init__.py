"""Per-block runtime and memory measurement on the target."""
