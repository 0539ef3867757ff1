"""MLflow tracking: one run per stage execution, lineage, the tracking CLI."""
