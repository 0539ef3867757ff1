"""Assembly: solution + library -> child (puzzle_dsl/model/assemble.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from puzzle_dsl.dsl.space import block_piece
from puzzle_dsl.model.assemble import AssemblyError, assemble_child
from puzzle_dsl.model.checkpoint import child_config_from_llama, load_parent
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM
from puzzle_dsl.pipeline import layout

PARENT_ATTN = {"kind": "gqa", "n_heads_in_group": 2}  # tiny parent: 6 heads over 3 KV heads
PARENT_FFN = {"kind": "swiglu", "intermediate_size": 128}
VARIANTS = {
    "attention": {"attn_parent": PARENT_ATTN, "attn_kv1": {"kind": "gqa", "n_heads_in_group": 6},
                  "attn_linear": {"kind": "linear"}, "attn_noop": {"kind": "no_op"}},
    "ffn": {"ffn_parent": PARENT_FFN, "ffn_i64": {"kind": "swiglu", "intermediate_size": 64},
            "ffn_linear": {"kind": "linear"}, "ffn_noop": {"kind": "no_op"}},
}
SUB_PREFIX = {"attention": ("input_layernorm", "self_attn"),
              "ffn": ("post_attention_layernorm", "mlp")}


def make_solution(names: list[tuple[str, str]]) -> dict:
    """A solutions.json entry from (attention variant, ffn variant) per layer."""
    return {"name": "sol0",
            "layers": [{"attention": a, "ffn": f} for a, f in names],
            "block_configs": [{"attention": block_piece("attention", VARIANTS["attention"][a]),
                               "ffn": block_piece("ffn", VARIANTS["ffn"][f])} for a, f in names]}


def write_library(root, parent_dir, solution: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """Save freshly initialised blocks of every trained variant in the library format."""
    parent, _ = load_parent(parent_dir)
    torch.manual_seed(seed)
    donor = NemotronNasForCausalLM(child_config_from_llama(parent.config.to_dict() | {
        "model_type": "llama"}, solution["block_configs"]))
    state = {k.removeprefix("model."): v for k, v in donor.state_dict().items()}
    files: dict[str, dict] = {}
    for i, layer in enumerate(solution["layers"]):
        for sub, name in layer.items():
            if name.endswith(("parent", "noop")):
                continue
            keys = {k: v.clone() for k, v in state.items()
                    if k.startswith(tuple(f"layers.{i}.{p}." for p in SUB_PREFIX[sub]))}
            files.setdefault(name, {}).update(keys)
    for name, tensors in files.items():
        out = root / layout.library_dir(name)
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / "blocks.safetensors"))
    return {f"model.{k}": v for t in files.values() for k, v in t.items()}


def test_parent_identical_solution_reproduces_parent_logits(tiny_parent_dir, tmp_path):
    solution = make_solution([("attn_parent", "ffn_parent")] * 4)
    child, _ = assemble_child(tiny_parent_dir, solution, root=tmp_path)
    parent, _ = load_parent(tiny_parent_dir)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(child(ids).logits, parent(ids).logits, rtol=0, atol=1e-6)


def test_mixed_solution_loads_library_blocks_strictly(tiny_parent_dir, tmp_path):
    solution = make_solution([("attn_kv1", "ffn_i64"), ("attn_linear", "ffn_noop"),
                              ("attn_noop", "ffn_linear"), ("attn_parent", "ffn_parent")])
    library = write_library(tmp_path, tiny_parent_dir, solution)
    child, _ = assemble_child(tiny_parent_dir, solution, root=tmp_path)
    state = child.state_dict()
    for key, tensor in library.items():
        torch.testing.assert_close(state[key], tensor, rtol=0, atol=0)
    parent_state = load_parent(tiny_parent_dir)[0].state_dict()
    torch.testing.assert_close(state["model.layers.3.mlp.up_proj.weight"],
                               parent_state["model.layers.3.mlp.up_proj.weight"], rtol=0, atol=0)
    assert child.model.layers[1].mlp is None and child.model.layers[2].self_attn is None
    assert child.config.kv_heads(0) == 1


def test_missing_library_names_the_bld_stage(tiny_parent_dir, tmp_path):
    solution = make_solution([("attn_kv1", "ffn_parent")] + [("attn_parent", "ffn_parent")] * 3)
    with pytest.raises(AssemblyError, match="bld-attn_kv1"):
        assemble_child(tiny_parent_dir, solution, root=tmp_path)


def test_library_with_wrong_shapes_is_refused(tiny_parent_dir, tmp_path):
    solution = make_solution([("attn_parent", "ffn_i64")] + [("attn_parent", "ffn_parent")] * 3)
    write_library(tmp_path, tiny_parent_dir, solution)
    solution["block_configs"][0]["ffn"]["intermediate_size"] = 96  # library was built for 64
    with pytest.raises(AssemblyError, match="wrong shapes"):
        assemble_child(tiny_parent_dir, solution, root=tmp_path)


def test_select_measures_each_candidate_whole_against_the_parent(tiny_parent_dir, tmp_path):
    import numpy as np

    from puzzle_dsl.evaluate.candidates import measure_assembled as measure

    same = [("attn_parent", "ffn_parent")] * 4
    cut = [("attn_linear", "ffn_i64"), ("attn_noop", "ffn_noop")] * 2
    write_library(tmp_path, tiny_parent_dir, make_solution(cut))
    space = {sub: {n: dict(spec, layers=list(range(4))) for n, spec in variants.items()}
             for sub, variants in VARIANTS.items()}
    rows = np.random.default_rng(0).integers(0, 256, size=(3, 16)).astype(np.int32)
    got = measure([tuple(same), tuple(cut)], space, str(tiny_parent_dir), rows, root=str(tmp_path))
    assert got[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert got[0]["top1_agreement"] == 1.0
    assert got[1]["kl"] > 0.01 and got[1]["tokens"] == rows.size
