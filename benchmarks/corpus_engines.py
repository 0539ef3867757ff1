"""Corpus sampling speed: transformers `generate` (ParentSampler) vs llama.cpp (LlamaCppSampler).

    python benchmarks/corpus_engines.py [--parent DIR] [--tokens 8192] [--batch 32] [--new 256]

Each engine samples documents from the parent with the default source settings until
`--tokens` document tokens are kept (as the corpus stage counts them), one after the other on
the same machine. Prints kept tokens/s, sampled (new) tokens/s and the wall time of each.
"""

from __future__ import annotations

import time

from parent_option import parent_dir, parser_with_parent

from puzzle_dsl.corpus.generate import ParentSampler
from puzzle_dsl.corpus.llama_cpp_sample import LlamaCppSampler
from puzzle_dsl.dsl.recipe import Generated
from puzzle_dsl.model.checkpoint import load_parent


def run(sampler, tokens: int) -> dict:
    start, kept = time.perf_counter(), 0
    for doc in sampler:
        kept += len(doc)
        if kept >= tokens:
            break
    wall = time.perf_counter() - start
    return {"kept_tokens": kept, "wall_s": wall, "kept_tok_s": kept / wall,
            "sampled_tok_s": sampler.new_tokens / wall}


def main() -> None:
    ap = parser_with_parent(__doc__)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=256)
    args = ap.parse_args()
    parent = parent_dir(args)
    model, tokenizer = load_parent(parent)
    settings = {"batch_size": args.batch, "max_new_tokens": args.new}
    results = {
        "transformers": run(ParentSampler(model, tokenizer, Generated(**settings)), args.tokens),
        "llama.cpp": run(LlamaCppSampler(model, tokenizer,
                                         Generated(engine="llama.cpp", **settings)), args.tokens),
    }
    print(f"parent {parent}, batch {args.batch}, {args.new} new tokens at most")
    print("| engine | kept tokens | wall s | kept tok/s | sampled tok/s |")
    print("|---|---|---|---|---|")
    for engine, r in results.items():
        print(f"| {engine} | {r['kept_tokens']} | {r['wall_s']:.1f} | {r['kept_tok_s']:.1f} | "
              f"{r['sampled_tok_s']:.1f} |")
    base = results["transformers"]["kept_tok_s"]
    print(f"llama.cpp / transformers (kept tokens/s): {results['llama.cpp']['kept_tok_s'] / base:.2f}x")


if __name__ == "__main__":
    main()
