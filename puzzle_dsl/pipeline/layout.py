"""Where every stage reads and writes, relative to the pipeline root (the folder of dvc.yaml).

The compiler and the stage programs both take paths from here, so the two cannot drift.
Metrics and plots live outside the artifact folders because DVC forbids overlapping outputs.
"""

from __future__ import annotations

ARTIFACTS = "artifacts"
METRICS = "metrics"
PLOTS = "plots"
EXPORTS = "exports"

# code fingerprints: {program}.json, what each stage program runs (compiler/code_deps.py)
CODE_DIR = f"{ARTIFACTS}/code"
# parent import: a plain float checkpoint + tokenizer (Llama weights, HF layout)
PARENT_DIR = f"{ARTIFACTS}/parent"
# tokenized, packed, split corpus: {train,score,valid}.npy (int32, shape [n_seq, seq_len]) + stats.json
CORPUS_DIR = f"{ARTIFACTS}/corpus"
CORPUS_METRICS = f"{METRICS}/corpus.json"
# FFN channel contributions (PUZZLE.md section 2), computed once, reused by every FFN variant
CALIBRATION_FILE = f"{ARTIFACTS}/calibration/channel_contributions.safetensors"

# ShortGPT block influence of every parent layer (depth-pruning baseline): {"layers": [BI, ...]}
INFLUENCE_FILE = f"{ARTIFACTS}/influence/block_influence.json"

# the cached teacher: the parent's top-k log-probs on the GKD rows (gkd/teacher.py FILES)
TEACHER_DIR = f"{ARTIFACTS}/teacher"
TEACHER_METRICS = f"{METRICS}/teacher.json"

# runtime table of every block shape + the parent end to end
RUNTIME_DIR = f"{ARTIFACTS}/runtime"
RUNTIME_METRICS = f"{METRICS}/runtime.json"

SEARCH_DIR = f"{ARTIFACTS}/search"
SEARCH_METRICS = f"{METRICS}/search.json"
SEARCH_PLOT = f"{PLOTS}/search/pareto.csv"

PARENT_EVAL_METRICS = f"{METRICS}/eval/parent.json"

# the speed benchmark: the parent and every child timed together, with spread and conditions
BENCHMARK_METRICS = f"{METRICS}/benchmark.json"

# the results table of the parent and every child: one metrics file per model, and Markdown
RESULTS_TABLE = f"{ARTIFACTS}/report/results.md"


def code_fingerprint(program: str) -> str:
    """The fingerprint of the code `stages/PROGRAM.py` runs (written by the `code` stage)."""
    return f"{CODE_DIR}/{program}.json"


def results_metrics(model: str) -> str:
    """One row of the results table (`dvc metrics show metrics/results`)."""
    return f"{METRICS}/results/{model}.json"


def library_dir(variant: str) -> str:
    """blocks.safetensors (this variant's blocks for every layer it may use) + losses.parquet."""
    return f"{ARTIFACTS}/library/{variant}"


def bld_metrics(variant: str) -> str:
    return f"{METRICS}/bld/{variant}.json"


def bld_plot(variant: str) -> str:
    return f"{PLOTS}/bld/{variant}.csv"


def scores_file(variant: str) -> str:
    """Replace-1-block scores: a parquet table (layer, variant, metric, value, tokens)."""
    return f"{ARTIFACTS}/scores/{variant}.parquet"


def score_metrics(variant: str) -> str:
    return f"{METRICS}/score/{variant}.json"


def solution_name(index: int) -> str:
    return f"sol{index}"


def assembled_dir(solution: str) -> str:
    """The child assembled from the library, before GKD (an HF directory, remote code included)."""
    return f"{ARTIFACTS}/children/{solution}/assembled"


def gkd_dir(solution: str) -> str:
    """The child after global knowledge distillation."""
    return f"{ARTIFACTS}/children/{solution}/gkd"


def gkd_metrics(solution: str) -> str:
    return f"{METRICS}/gkd/{solution}.json"


def gkd_plot(solution: str) -> str:
    return f"{PLOTS}/gkd/{solution}.csv"


def eval_metrics(solution: str) -> str:
    return f"{METRICS}/eval/{solution}.json"


def eval_items(model: str) -> str:
    """Per-item lm-eval scores of `parent` or a child (the report's paired intervals)."""
    return f"{ARTIFACTS}/eval/{model}.items.json"


def export_dir(recipe: str, solution: str) -> str:
    return f"{EXPORTS}/{recipe}-{solution}"
