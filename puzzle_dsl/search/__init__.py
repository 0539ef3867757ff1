"""The MIP search: SCIP model, constraint tables, baselines."""
