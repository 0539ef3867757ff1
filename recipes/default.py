"""The main job: SmolLM2-135M -> a child with 2x its generation throughput on this CPU.

Token budgets are sized for a full `dvc repro` of about an hour on 2 idle CPU cores (the dev
pipeline, with four benchmark tasks, took 67 min with tests beside it; parent forward ~570
tokens/s, llama.cpp sampling ~145 new tokens/s at batch 32), not for quality; raise them on
faster machines. The target is 2.1x predicted so that the measured speedup clears 2.0x: the
runtime model's predictions land within about 5% of the measured speedups here.

It reads nothing beside the checkout, so a fresh clone compiles it to exactly the committed
dvc.yaml; `recipes/dev.py` is the same job with benchmark tasks from ../shared/data.
"""

from puzzle_dsl.dsl import *  # the recipe language: Recipe, Parent, SearchSpace, ...

recipe = Recipe(
    name="default",
    parent=Parent("gguf:default"),
    corpus=Corpus(
        # sampled in llama.cpp (continuous batching): ~190 new tokens/s here, transformers ~57
        sources=[Generated(engine="llama.cpp", batch_size=32, max_new_tokens=256)],
        seq_len=256,
        train_tokens=32_768,  # GKD reads each once; BLD the first half of an epoch
        score_tokens=1_024,
        valid_tokens=4_096,
    ),
    space=SearchSpace(
        attention=[GQA(kv_heads=3), GQA(kv_heads=1), LinearAttention(), NoOpAttention()],
        # every width below the parent's 1536 on the readers' 256 grid; no LinearFFN(): the
        # children are exported to llama.cpp (gguf), which cannot run it
        ffn=[FFN(size=s) for s in (256, 512, 768, 1024, 1280)] + [NoOpFFN()],
        keep_parent_layers=[0, -1],
    ),
    bld=BLD(tokens=16_384, batch_size=4, lr=5e-4, calibration_tokens=8_192),
    scoring=Scoring(metric="kl", tokens=512, batch_size=4),
    # timed in llama.cpp, the engine CPU users serve with (probe GGUFs; 3 guarded rounds)
    scenario=Scenario(device="cpu", engine="llama.cpp", dtype="float32", batch_sizes=[16],
                      prefill_len=128, decode_len=128, repeats=3),
    # select: the summed replace-1-block scores put linear attention in 26 of 30 layers
    # (assembled KL 2.72); the MIP's optima with more GQA layers, measured whole, do better
    # (12 GQA layers: 2.04), so the children are the candidates of lowest measured KL
    # one child: the three diverse children of session 5 were near-duplicates (10, 13 and 6 GQA
    # layers, retention 0.62 / 0.62 / 0.57), each costing a GKD and an evaluation; their minutes
    # go to twice the GKD tokens (KL was still falling at 16k)
    search=Search(throughput=Relative(2.1), num_solutions=1, select=Select(candidates=6),
                  baselines=[UniformWidth(), DepthPruning()]),
    gkd=GKD(tokens=32_768, batch_size=4, lr=4e-4),
    evaluation=Evaluation(limit=100, batch_size=16,
                          benchmark=Benchmark(engine="llama.cpp", batch_size=16,
                                              prefill_len=128, decode_len=128, repeats=3)),
)
