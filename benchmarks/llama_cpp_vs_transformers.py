"""Generation speed of the parent and children in llama.cpp and in transformers, one run.

    python benchmarks/llama_cpp_vs_transformers.py [--parent DIR] [--batch 16] [--prefill 128]
        [--decode 128] [--repeats 3] [--threads 1] [--gguf-type f32]

The parent is SmolLM2-135M (imported from gguf:default unless --parent names an HF directory);
the children are untrained cuts of it (runtime.synthetic.sliced_child): speed only. Both engines
run greedy batched generation on one thread, each engine's models interleaved, so a loaded
machine slows them alike; the speedups are the figures to read, not the absolute rates.
"""

from __future__ import annotations

import torch
from parent_option import parent_dir, parser_with_parent

from puzzle_dsl.evaluate.benchmark import generation_benchmark
from puzzle_dsl.model.checkpoint import load_parent
from puzzle_dsl.runtime.synthetic import sliced_child


def children(cfg) -> dict[str, list[dict]]:
    """Block configs of a few children of a Llama parent `cfg` (first and last layer kept)."""
    n, group = cfg.num_hidden_layers, cfg.num_attention_heads // cfg.num_key_value_heads
    full = {"attention": {"n_heads_in_group": group}, "ffn": {"intermediate_size": cfg.intermediate_size}}
    noop_attn = {**full, "attention": {"no_op": True}}
    half_ffn = {**full, "ffn": {"intermediate_size": cfg.intermediate_size // 2}}
    kv1 = {**full, "attention": {"n_heads_in_group": cfg.num_attention_heads}}
    mixed = [noop_attn, half_ffn, kv1, {"attention": {"no_op": True}, "ffn": {"no_op": True}}]

    def every(pattern: list[dict]) -> list[dict]:
        return [full if i in (0, n - 1) else pattern[i % len(pattern)] for i in range(n)]

    return {"half_attention_noop": every([full, noop_attn]), "ffn_halved": every([half_ffn]),
            "mixed": every(mixed)}


def main() -> None:
    ap = parser_with_parent(__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gguf-type", default="f32")
    args = ap.parse_args()
    parent, tokenizer = load_parent(parent_dir(args))
    models = {"parent": parent} | {name: sliced_child(parent, blocks)
                                   for name, blocks in children(parent.config).items()}
    settings = {"batch_size": args.batch, "prefill_len": args.prefill,
                "decode_len": args.decode, "repeats": args.repeats}
    torch.set_num_threads(args.threads)
    # both engines under the stages' guard (contended rounds dropped, noisy figures refused)
    hf = generation_benchmark(models, **settings)["models"]
    lc = generation_benchmark(models, **settings, engine="llama.cpp", tokenizer=tokenizer,
                              gguf_type=args.gguf_type)["models"]
    print(f"greedy generation, {settings}, {args.threads} thread(s), llama.cpp {args.gguf_type}")
    print("| model | params | transformers tok/s | speedup | llama.cpp tok/s | speedup |")
    print("|---|---|---|---|---|---|")
    for name, m in models.items():
        a, b = hf[name]["generation_tokens_per_s"], lc[name]["generation_tokens_per_s"]
        pa, pb = hf["parent"]["generation_tokens_per_s"], lc["parent"]["generation_tokens_per_s"]
        params = sum(p.numel() for p in m.parameters())
        print(f"| {name} | {params / 1e6:.1f}M | {a:.1f} | {a / pa:.2f} | {b:.1f} | {b / pb:.2f} |")


if __name__ == "__main__":
    main()
