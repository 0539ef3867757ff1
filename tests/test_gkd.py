"""Global knowledge distillation (puzzle_dsl/gkd/distill.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from test_assemble import make_solution, write_library

from puzzle_dsl.dsl.recipe import GKD
from puzzle_dsl.evaluate.measures import text_metrics
from puzzle_dsl.gkd.distill import cosine_loss, distill, kl_loss, step_rows
from puzzle_dsl.model.assemble import assemble_child
from puzzle_dsl.model.checkpoint import load_child, load_parent, save_child
from puzzle_dsl.pipeline import layout
from puzzle_dsl.pipeline.run_stage import run_stage
from puzzle_dsl.train import sharding as sharding_mod

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SOLUTION = [("attn_kv1", "ffn_i64"), ("attn_parent", "ffn_linear"),
            ("attn_linear", "ffn_parent"), ("attn_noop", "ffn_i64")]
CFG = GKD(tokens=8 * 32 * 6, batch_size=8, lr=2e-3, warmup_frac=0.2, checkpoint_every=3)


def rows(seed: int, n: int = 32, seq_len: int = 32) -> np.ndarray:
    """Token rows in the corpus format (int32 [n_seq, seq_len])."""
    return np.random.default_rng(seed).integers(0, 512, (n, seq_len), dtype=np.int32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine they spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def child_dir(tiny_parent_dir, tmp_path_factory):
    """A mixed child assembled from a freshly initialised library, saved as a child dir."""
    root = tmp_path_factory.mktemp("gkd_root")
    solution = make_solution(SOLUTION)
    write_library(root, tiny_parent_dir, solution)
    child, tok = assemble_child(tiny_parent_dir, solution, root=root)
    return save_child(child, tok, root / "assembled")


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_losses_vanish_for_identical_models():
    h = [torch.randn(2, 5, 8) for _ in range(3)]
    logits = torch.randn(2, 5, 11)
    assert float(cosine_loss(h, h)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)


def test_data_order_covers_every_row_once_per_epoch():
    cfg = GKD(batch_size=4, grad_accum=2, seed=3)
    seen = np.concatenate([step_rows(16, s, m, cfg) for s in range(2) for m in range(2)])
    assert sorted(seen.tolist()) == list(range(16))


def test_gkd_lowers_kl_to_parent_on_held_out_rows(tiny_parent_dir, child_dir):
    parent, _ = load_parent(tiny_parent_dir)
    child, _ = load_child(child_dir)
    valid = rows(99, n=16)
    before = text_metrics({"child": child}, parent, valid)["child"]["kl"]
    cfg = CFG.replace(tokens=8 * 32 * 30)
    log = distill(child, parent, rows(0), cfg, progress=False)
    after = text_metrics({"child": child}, parent, valid)["child"]["kl"]
    assert after < 0.7 * before, (before, after)
    assert log[-1]["loss"] < log[0]["loss"]


def test_gkd_resumes_from_checkpoint_to_the_uninterrupted_result(tiny_parent_dir, child_dir,
                                                                  tmp_path):
    parent, _ = load_parent(tiny_parent_dir)
    train = rows(0)
    straight, _ = load_child(child_dir)
    log_a = distill(straight, parent, train, CFG, progress=False)
    interrupted, _ = load_child(child_dir)
    ckpt = tmp_path / "gkd.ckpt"
    distill(interrupted, parent, train, CFG, checkpoint=ckpt, stop_after=4, progress=False)
    resumed, _ = load_child(child_dir)  # a fresh process would start from the assembled child
    log_b = distill(resumed, parent, train, CFG, checkpoint=ckpt, progress=False)
    assert [r["loss"] for r in log_b] == [r["loss"] for r in log_a]
    assert max_diff(params_of(straight), params_of(resumed)) == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, parent_dir, child_dir, out,
               sharding: str = "ddp", checkpoint=None, stop_after=None) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ[sharding_mod.SHARDING_ENV] = sharding
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        parent, _ = load_parent(parent_dir)
        child, _ = load_child(child_dir)
        whole = (sharding_mod.local_numel(child), sharding_mod.local_numel(parent))
        distill(child, parent, rows(0), CFG, checkpoint=checkpoint, stop_after=stop_after,
                progress=False)
        if sharding == "fsdp":
            held = (sharding_mod.local_numel(child), sharding_mod.local_numel(parent))
            assert all(h < 0.75 * w for h, w in zip(held, whole)), (held, whole)
            state = sharding_mod.full_state(child)
        else:
            state = child.state_dict()
        if rank == 0:
            torch.save(state, out)
    finally:
        dist.destroy_process_group()


def _two_ranks(tiny_parent_dir, child_dir, out, sharding="ddp", checkpoint=None,
               stop_after=None) -> dict:
    # fork: the workers inherit the imported modules instead of re-importing torch + transformers
    mp.start_processes(_rank_main, args=(2, _free_port(), tiny_parent_dir, child_dir, out,
                                         sharding, checkpoint, stop_after),
                       nprocs=2, start_method="fork")
    return torch.load(out, weights_only=True)


def _load_sharded_rank(rank: int, world: int, port: int, model_dir, out, which: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = sharding_mod.load_sharded(model_dir, torch.device("cpu"))
        whole = (load_child if which == "child" else load_parent)(model_dir)[0]
        assert sharding_mod.local_numel(model) < 0.75 * sharding_mod.local_numel(whole)
        ids = torch.arange(24).reshape(2, 12) % model.config.vocab_size
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
        state = sharding_mod.full_state(model)
        if rank == 0:
            torch.save({"state": state, "logits": logits,
                        "reference": whole(input_ids=ids, use_cache=False).logits.detach()}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("which", ["parent", "child"])
def test_a_sharded_load_reads_only_this_ranks_shards_and_computes_the_whole_models_logits(
        tiny_parent_dir, child_dir, tmp_path, which):
    from safetensors.torch import load_file

    model_dir = tiny_parent_dir if which == "parent" else child_dir
    out = tmp_path / "sharded.pt"
    mp.start_processes(_load_sharded_rank, args=(2, _free_port(), model_dir, out, which), nprocs=2,
                       start_method="fork")
    got = torch.load(out, weights_only=True)
    assert float((got["logits"] - got["reference"]).abs().max()) < 1e-5
    stored = load_file(str(model_dir / "model.safetensors"))
    assert all(torch.equal(got["state"][k], v) for k, v in stored.items())


def _one_process(tiny_parent_dir, child_dir, checkpoint=None) -> tuple[dict, list]:
    parent, _ = load_parent(tiny_parent_dir)
    single, _ = load_child(child_dir)
    log = distill(single, parent, rows(0), CFG, checkpoint=checkpoint, progress=False)
    return params_of(single), log


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_gloo_ranks_match_one_process(tiny_parent_dir, child_dir, tmp_path, sharding):
    ranks = _two_ranks(tiny_parent_dir, child_dir, tmp_path / "ranks.pt", sharding)
    diff = max_diff(_one_process(tiny_parent_dir, child_dir)[0], ranks)
    print(f"largest parameter difference, 2 gloo ranks ({sharding}) vs 1 process: {diff:.3e}")
    assert diff < 1e-5


def test_fsdp_in_bfloat16_keeps_float32_master_weights_near_the_float32_run(
        tiny_parent_dir, child_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(sharding_mod.PARAM_DTYPE_ENV, "bfloat16")  # forked ranks inherit it
    ranks = _two_ranks(tiny_parent_dir, child_dir, tmp_path / "ranks.pt", "fsdp")
    reference = _one_process(tiny_parent_dir, child_dir)[0]
    assert {t.dtype for t in ranks.values()} == {torch.float32}
    start = params_of(load_child(child_dir)[0])

    def update(state: dict) -> torch.Tensor:  # what training changed, every parameter in a row
        return torch.cat([(state[k] - start[k]).flatten() for k in sorted(start)])

    fp32, bf16 = update(reference), update(ranks)
    cos = float(torch.nn.functional.cosine_similarity(fp32, bf16, dim=0))
    rel = float((bf16 - fp32).norm() / fp32.norm())
    print(f"bfloat16 FSDP vs float32 one process: update cosine {cos:.4f}, relative error {rel:.3f}")
    assert cos > 0.99 and rel < 0.1  # bf16 compute rounds, yet training goes where float32 goes


def test_recomputing_activations_trains_to_the_same_child(tiny_parent_dir, child_dir,
                                                         monkeypatch):
    kept, kept_log = _one_process(tiny_parent_dir, child_dir)
    monkeypatch.setenv(sharding_mod.RECOMPUTE_ENV, "1")
    recomputed, log = _one_process(tiny_parent_dir, child_dir)
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in kept_log], rel=1e-5)
    assert max_diff(kept, recomputed) < 1e-5


def test_recomputing_activations_runs_each_layer_again_in_the_backward(tiny_parent_dir, child_dir,
                                                                       monkeypatch):
    parent, _ = load_parent(tiny_parent_dir)
    child, _ = load_child(child_dir)
    ffn = next(layer.mlp for layer in child.model.layers if layer.mlp is not None)
    starts = []
    ffn.register_forward_pre_hook(lambda *_: starts.append(1))
    one_step = CFG.replace(tokens=8 * 32)
    for switch, runs in [("0", 1), ("1", 2)]:
        monkeypatch.setenv(sharding_mod.RECOMPUTE_ENV, switch)
        starts.clear()
        distill(child, parent, rows(0), one_step, progress=False)
        assert len(starts) == runs, switch  # the forward, then (recompute) the backward's replay
    assert not any(layer.gradient_checkpointing for layer in child.model.layers)  # as it was


def test_recomputing_activations_under_fsdp_matches_one_process(tiny_parent_dir, child_dir,
                                                                tmp_path, monkeypatch):
    monkeypatch.setenv(sharding_mod.RECOMPUTE_ENV, "1")  # forked ranks inherit it
    ranks = _two_ranks(tiny_parent_dir, child_dir, tmp_path / "ranks.pt", "fsdp")
    monkeypatch.delenv(sharding_mod.RECOMPUTE_ENV)
    assert max_diff(_one_process(tiny_parent_dir, child_dir)[0], ranks) < 1e-5


def test_an_unknown_recompute_switch_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv(sharding_mod.RECOMPUTE_ENV, "sometimes")
    with pytest.raises(ValueError, match="PUZZLE_GKD_RECOMPUTE='sometimes' .* use 1 .* or 0"):
        sharding_mod.recompute_from_env()
    monkeypatch.delenv(sharding_mod.RECOMPUTE_ENV)
    assert sharding_mod.recompute_from_env() is False


def test_an_unknown_compute_dtype_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv(sharding_mod.PARAM_DTYPE_ENV, "int8")
    with pytest.raises(ValueError, match="PUZZLE_GKD_PARAM_DTYPE='int8' .* auto or one of"):
        sharding_mod.param_dtype_from_env(torch.device("cpu"))
    monkeypatch.setenv(sharding_mod.PARAM_DTYPE_ENV, "auto")
    assert sharding_mod.param_dtype_from_env(torch.device("cpu")) is None
    assert sharding_mod.param_dtype_from_env(torch.device("cuda", 0)) is torch.bfloat16


def test_a_checkpoint_two_fsdp_ranks_wrote_resumes_on_one_process(tiny_parent_dir, child_dir,
                                                                  tmp_path):
    ckpt = tmp_path / "gkd.resume"
    _two_ranks(tiny_parent_dir, child_dir, tmp_path / "ranks.pt", "fsdp", ckpt, stop_after=4)
    shards = sorted(p.name for p in (ckpt / sharding_mod.TENSORS_DIR).glob("*.safetensors"))
    assert len(shards) == 2, shards  # each rank wrote its own
    resumed, log = _one_process(tiny_parent_dir, child_dir, checkpoint=ckpt)
    straight, straight_log = _one_process(tiny_parent_dir, child_dir)
    assert len(log) == len(straight_log) == CFG.total_steps(32)
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in straight_log], rel=1e-4)
    assert max_diff(straight, resumed) < 1e-5


def test_an_unknown_sharding_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv(sharding_mod.SHARDING_ENV, "zero3")
    with pytest.raises(ValueError, match="PUZZLE_GKD_SHARDING='zero3' .* ddp, fsdp"):
        sharding_mod.sharding_from_env()


def test_checkpoint_of_other_params_is_not_resumed(tiny_parent_dir, child_dir, tmp_path):
    parent, _ = load_parent(tiny_parent_dir)
    ckpt = tmp_path / "gkd.ckpt"
    distill(load_child(child_dir)[0], parent, rows(0), CFG, checkpoint=ckpt, stop_after=3,
            progress=False)
    other = CFG.replace(lr=5e-4)
    resumed, _ = load_child(child_dir)
    log = distill(resumed, parent, rows(0), other, checkpoint=ckpt, progress=False)
    straight, _ = load_child(child_dir)
    distill(straight, parent, rows(0), other, progress=False)
    assert len(log) == other.total_steps(32)
    assert max_diff(params_of(straight), params_of(resumed)) == 0.0


def test_unknown_gkd_params_are_rejected():
    with pytest.raises(ValueError, match="gkd.lr_max is not a known key; known: .*lr"):
        GKD.from_params({"lr_max": 1.0}, "gkd")


def test_gkd_betas_are_a_recipe_field_compiled_to_params():
    assert GKD(betas=[0.8, 0.9]).section()["betas"] == [0.8, 0.9]


def _gkd_pipeline(root, parent_dir, child_dir):
    """A pipeline dir holding what the gkd-sol0 stage reads: parent, assembled child, corpus."""
    shutil.copytree(parent_dir, root / layout.PARENT_DIR)
    shutil.copytree(child_dir, root / layout.assembled_dir("sol0"))
    (root / layout.CORPUS_DIR).mkdir(parents=True)
    np.save(root / layout.CORPUS_DIR / "train.npy", rows(0))
    (root / "stages").symlink_to(REPO / "stages")
    (root / "params.yaml").write_text(yaml.safe_dump({"gkd": CFG.section()}))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"gkd-sol0": {
        "cmd": "puzzle-dsl run-stage gkd sol0", "params": ["gkd"]}}}))
    return root


def test_the_gkd_stage_under_torchrun_fsdp_writes_the_child_one_process_writes(
        tiny_parent_dir, child_dir, tmp_path):
    from safetensors.torch import load_file

    env = {**os.environ, "PUZZLE_TRACKING": "0", "OMP_NUM_THREADS": "1",
           sharding_mod.SHARDING_ENV: "fsdp"}
    two = _gkd_pipeline(tmp_path / "two", tiny_parent_dir, child_dir)
    proc = subprocess.Popen(  # started first: it runs while the single process trains below
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2",
         str(BIN / "puzzle-dsl"), "run-stage", "gkd", "sol0"],
        cwd=two, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    one = _gkd_pipeline(tmp_path / "one", tiny_parent_dir, child_dir)
    cwd = os.getcwd()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PUZZLE_TRACKING", "0")
        try:
            os.chdir(one)
            run_stage("gkd", "sol0", one)
        finally:
            os.chdir(cwd)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    ref, got = (load_file(str(r / layout.gkd_dir("sol0") / "model.safetensors"))
                for r in (one, two))
    assert ref.keys() == got.keys()
    assert max_diff(ref, got) < 1e-5
    assert not (two / f"{layout.gkd_dir('sol0')}.resume").exists()
