"""Recipe -> dvc.yaml + params.yaml (no torch)."""
