"""A GPU example: Llama-3.1-8B-Instruct -> a child 1.7x faster on one H100 (bf16), in the
spirit of the paper's 8B result (PUZZLE.md section 7). Compiles offline: the parent's shape
is stated here because the hub config cannot be read without the network."""

from puzzle_dsl.dsl import *  # the recipe language: Recipe, Parent, SearchSpace, ...

recipe = Recipe(
    name="llama31_8b",
    parent=Parent(
        "hub:meta-llama/Llama-3.1-8B-Instruct",
        dtype="bfloat16",
        shape=ParentShape(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                          num_key_value_heads=8, intermediate_size=14336, vocab_size=128256),
    ),
    corpus=Corpus(
        sources=[HFDataset("HuggingFaceFW/fineweb-edu", split="train", field="text")],
        seq_len=512,
        train_tokens=200_000_000,
        score_tokens=1_048_576,
        valid_tokens=1_048_576,
    ),
    space=SearchSpace(
        attention=[GQA(kv_heads=k) for k in (4, 2, 1)] + [LinearAttention(), NoOpAttention()],
        ffn=[FFN(share=s) for s in (0.1, 0.2, 0.25, 0.5, 0.75, 0.87)] + [LinearFFN(), NoOpFFN()],
        keep_parent_layers=[0, -1],
    ),
    bld=BLD(tokens=50_000_000, batch_size=16, lr=1e-4),
    scoring=Scoring(metric="kl", tokens=262_144, batch_size=16),
    gguf=None,  # a GPU deployment (LinearFFN is in the space; llama.cpp cannot run it)
    scenario=Scenario(device="cuda", dtype="bfloat16", batch_sizes=[64, 128, 256],
                      prefill_len=128, decode_len=1024),
    search=Search(throughput=Relative(1.7), memory_gib=75, num_solutions=3),
    gkd=GKD(tokens=500_000_000, batch_size=16, grad_accum=4, lr=1e-4, checkpoint_every=500),
    evaluation=Evaluation(
        tasks=[Task("arc_challenge"), Task("hellaswag"), Task("winogrande"), Task("mmlu")],
        batch_size=32,
        benchmark=Benchmark(batch_size=64, prefill_len=128, decode_len=1024),
    ),
)
