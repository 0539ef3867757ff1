"""A tiny end-to-end job on the random tiny parent: every stage kind, in as few stages as possible.

Each stage is a process that imports torch and transformers (~4 s of CPU), so the stage count,
not the budgets, sets the cost: one solution (4 stages per child) keeps the full `dvc repro`
at 20 stages (with the one benchmark). The pipeline tests (tests/test_dvc_pipeline.py, test_smoke_*.py) run it for real.
"""

from puzzle_dsl.dsl import *  # the recipe language: Recipe, Parent, SearchSpace, ...

UNGUARDED = Timing(max_spread=None, max_wait=None, parent_ratio=None)

recipe = Recipe(
    name="smoke",
    parent=Parent("tiny:0"),
    corpus=Corpus(
        sources=[Generated(batch_size=32, max_new_tokens=64)],  # one generation batch
        seq_len=64,
        train_tokens=1_536,
        score_tokens=256,
        valid_tokens=256,
    ),
    space=SearchSpace(
        attention=[GQA(kv_heads=1), NoOpAttention()],
        ffn=[FFN(share=0.5), NoOpFFN()],
        keep_parent_layers=[0],
        ffn_grid=32,  # the tiny parent's FFN is 128 wide: below the readers' 256 (compile notes it)
    ),
    bld=BLD(tokens=1_024, batch_size=4, lr=1e-3, calibration_tokens=256, calibration_batch_size=4),
    scoring=Scoring(metric="kl", tokens=256, batch_size=4),
    # timings of a tiny model are plumbing here: recorded with their conditions, not guarded
    scenario=Scenario(device="cpu", dtype="float32", batch_sizes=[2], prefill_len=16,
                      decode_len=16, warmup=1, repeats=3, timing=UNGUARDED),
    # select: the MIP's candidates measured whole (three assembled children, seconds here)
    search=Search(throughput=Relative(1.2), num_solutions=1, time_limit_s=10, pareto_points=3,
                  select=Select(candidates=3)),
    gkd=GKD(tokens=1_024, batch_size=4, lr=1e-3, checkpoint_every=10),
    evaluation=Evaluation(batch_size=4, benchmark=Benchmark(batch_size=2, prefill_len=16,
                                                            decode_len=16, timing=UNGUARDED)),
)
