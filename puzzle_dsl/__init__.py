"""puzzle-dsl: Puzzle (arXiv 2411.19146) as a recipe DSL compiled to cached DVC stages."""

__version__ = "0.1.0"
