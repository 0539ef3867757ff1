"""The cached teacher (gkd/teacher.py): the parent's top-k computed once, GKD without the parent."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from test_compiler import smol
from test_gkd import (  # noqa: F401
    CFG,
    REPO,
    _free_port,
    child_dir,
    max_diff,
    one_thread,
    params_of,
    rows,
)

from puzzle_dsl.compiler.build import build_pipeline
from puzzle_dsl.dsl.recipe import GKD, RecipeError
from puzzle_dsl.evaluate.measures import text_metrics
from puzzle_dsl.gkd.distill import distill
from puzzle_dsl.gkd.teacher import (
    TeacherError,
    covered_mass,
    load_teacher,
    parent_top_k,
    save_teacher,
)
from puzzle_dsl.model.checkpoint import load_child, load_parent
from puzzle_dsl.pipeline import layout
from puzzle_dsl.pipeline.run_stage import run_stage
from puzzle_dsl.train import sharding as sharding_mod
from puzzle_dsl.train.losses import token_kl, top_k_kl, top_k_targets

KL_ONLY = CFG.replace(cosine_weight=0.0)


def logps(seed: int, shape=(3, 5, 40)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.log_softmax(3 * torch.randn(shape, generator=g), dim=-1)


# ---------------------------------------------------------------- the loss
def test_top_k_kl_is_the_full_kl_when_k_covers_the_vocabulary():
    parent, child = logps(0), logps(1)
    got = top_k_kl(*top_k_targets(parent, k=40), child)
    torch.testing.assert_close(got, token_kl(parent, child), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 4, 16])
def test_top_k_kl_is_between_zero_and_the_full_kl(k):
    parent, child = logps(0), logps(1)
    got = top_k_kl(*top_k_targets(parent, k), child)
    assert (got >= -1e-6).all() and (got <= token_kl(parent, child) + 1e-5).all()
    same = top_k_kl(*top_k_targets(parent, k), parent)
    torch.testing.assert_close(same, torch.zeros_like(same), rtol=0, atol=1e-5)


def test_top_k_kl_gradients_are_finite_when_k_covers_the_vocabulary():
    logits = torch.randn(2, 3, 40, requires_grad=True)
    top_k_kl(*top_k_targets(logps(0, (2, 3, 40)), k=40), F.log_softmax(logits, -1)).sum().backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- the targets
def test_the_teacher_holds_the_parents_top_k_of_every_row(tiny_parent_dir, tmp_path):
    parent, _ = load_parent(tiny_parent_dir)
    train = rows(0, n=6)
    top_logp, top_ids, rest_logp = parent_top_k(parent, train, k=8, batch_size=4, progress=False)
    assert (top_logp.shape, top_ids.shape, rest_logp.shape) == ((6, 32, 8), (6, 32, 8), (6, 32))
    with torch.no_grad():
        logp = F.log_softmax(parent(input_ids=torch.from_numpy(train).long()).logits, -1)
    want_logp, want_ids = logp.topk(8, dim=-1)
    assert (top_ids == want_ids.numpy()).all()
    np.testing.assert_allclose(top_logp, want_logp.numpy(), atol=2e-3)  # stored in float16
    mass = np.exp(top_logp.astype(np.float64)).sum(-1) + np.exp(rest_logp.astype(np.float64))
    np.testing.assert_allclose(mass, 1.0, atol=1e-2)
    assert 0 < covered_mass(rest_logp) < 1

    save_teacher(tmp_path, (top_logp, top_ids, rest_logp))
    loaded = load_teacher(tmp_path, train, k=8)
    assert all((a == b).all() for a, b in zip(loaded, (top_logp, top_ids, rest_logp)))


def test_a_teacher_of_other_rows_or_another_k_is_refused_with_the_fix(tiny_parent_dir, tmp_path):
    parent, _ = load_parent(tiny_parent_dir)
    save_teacher(tmp_path, parent_top_k(parent, rows(0, n=4), k=8, batch_size=4, progress=False))
    for train, k in ((rows(0, n=5), 8), (rows(0, n=4), 16)):
        with pytest.raises(TeacherError, match="rerun `dvc repro teacher`"):
            load_teacher(tmp_path, train, k)
    with pytest.raises(TeacherError, match="missing .*run the teacher stage first"):
        load_teacher(tmp_path / "none", rows(0, n=4), 8)
    with pytest.raises(TeacherError, match="more than the parent's vocabulary"):
        parent_top_k(parent, rows(0, n=4), k=parent.config.vocab_size + 1, batch_size=4)


# ---------------------------------------------------------------- GKD against the cache
def test_gkd_on_the_whole_vocabulary_cached_trains_as_gkd_on_the_live_parent(tiny_parent_dir,
                                                                             child_dir):
    parent, _ = load_parent(tiny_parent_dir)
    train = rows(0)
    live, _ = load_child(child_dir)
    log_live = distill(live, parent, train, KL_ONLY, progress=False)
    vocab = parent.config.vocab_size
    teacher = parent_top_k(parent, train, vocab, batch_size=8, progress=False)
    cached, _ = load_child(child_dir)
    log_cached = distill(cached, None, train, KL_ONLY.replace(teacher_top_k=vocab),
                         teacher=teacher, progress=False)
    np.testing.assert_allclose([r["kl"] for r in log_cached], [r["kl"] for r in log_live],
                               rtol=2e-3)
    valid = text_metrics({"live": live, "cached": cached}, parent, rows(99, n=16))
    assert valid["cached"]["kl"] == pytest.approx(valid["live"]["kl"], rel=1e-2)


def test_gkd_on_the_top_k_lowers_the_full_kl_to_the_parent(tiny_parent_dir, child_dir):
    parent, _ = load_parent(tiny_parent_dir)
    child, _ = load_child(child_dir)
    valid = rows(99, n=16)
    before = text_metrics({"child": child}, parent, valid)["child"]["kl"]
    cfg = KL_ONLY.replace(tokens=8 * 32 * 30, teacher_top_k=128)  # a quarter of the vocabulary
    teacher = parent_top_k(parent, rows(0), 128, batch_size=8, progress=False)
    log = distill(child, None, rows(0), cfg, teacher=teacher, progress=False)
    after = text_metrics({"child": child}, parent, valid)["child"]["kl"]
    assert after < 0.7 * before, (before, after)
    assert log[-1]["loss"] < log[0]["loss"]


def test_gkd_refuses_the_cosine_term_or_a_missing_teacher(tiny_parent_dir, child_dir):
    parent, _ = load_parent(tiny_parent_dir)
    child, _ = load_child(child_dir)
    teacher = parent_top_k(parent, rows(0), 8, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="cosine_weight=1.0 needs the parent's hidden states"):
        distill(child, None, rows(0), CFG.replace(teacher_top_k=8), teacher=teacher)
    with pytest.raises(ValueError, match="the parent or its cached teacher targets"):
        distill(child, None, rows(0), KL_ONLY)


def _rank_main(rank: int, world: int, port: int, child_dir, teacher, out, sharding) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ[sharding_mod.SHARDING_ENV] = sharding
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        child, _ = load_child(child_dir)
        distill(child, None, rows(0), KL_ONLY.replace(teacher_top_k=16), teacher=teacher,
                progress=False)
        state = sharding_mod.full_state(child) if sharding == "fsdp" else child.state_dict()
        if rank == 0:
            torch.save(state, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_gloo_ranks_on_the_cached_teacher_match_one_process(tiny_parent_dir, child_dir,
                                                                tmp_path, sharding):
    parent, _ = load_parent(tiny_parent_dir)
    teacher = parent_top_k(parent, rows(0), 16, batch_size=8, progress=False)
    mp.start_processes(_rank_main, args=(2, _free_port(), child_dir, teacher,
                                         tmp_path / "ranks.pt", sharding),
                       nprocs=2, start_method="fork")
    single, _ = load_child(child_dir)
    distill(single, None, rows(0), KL_ONLY.replace(teacher_top_k=16), teacher=teacher,
            progress=False)
    assert max_diff(params_of(single), torch.load(tmp_path / "ranks.pt", weights_only=True)) < 1e-5


# ---------------------------------------------------------------- recipe and compiler
def test_a_recipe_caching_the_teacher_with_the_cosine_term_is_refused_with_the_fix():
    with pytest.raises(RecipeError, match=r"set GKD\(cosine_weight=0\), or drop teacher_top_k"):
        smol(gkd=GKD(teacher_top_k=64))


def test_a_cached_teacher_compiles_one_stage_every_childs_gkd_reads_instead_of_the_parent():
    from puzzle_dsl.dsl.recipe import DepthPruning, Search

    recipe = smol(gkd=GKD(teacher_top_k=64, cosine_weight=0),
                  search=Search(num_solutions=1, baselines=[DepthPruning()]))
    stages = {s.name: s for s in build_pipeline(recipe).stages}
    teacher = stages["teacher"]
    assert teacher.params == ["gkd.teacher_top_k"]  # GKD's lr or steps do not rerun it
    assert teacher.deps == [layout.PARENT_DIR, layout.CORPUS_DIR]
    for child in ("sol0", "depth"):
        deps = stages[f"gkd-{child}"].deps
        assert layout.TEACHER_DIR in deps and layout.PARENT_DIR not in deps
    live = {s.name: s for s in build_pipeline(smol()).stages}
    assert "teacher" not in live and layout.PARENT_DIR in live["gkd-sol0"].deps


def test_the_teacher_and_gkd_stages_train_a_child_without_the_parent(tiny_parent_dir, child_dir,
                                                                     tmp_path, monkeypatch):
    cfg = KL_ONLY.replace(teacher_top_k=16)
    shutil.copytree(tiny_parent_dir, tmp_path / layout.PARENT_DIR)
    shutil.copytree(child_dir, tmp_path / layout.assembled_dir("sol0"))
    (tmp_path / layout.CORPUS_DIR).mkdir(parents=True)
    np.save(tmp_path / layout.CORPUS_DIR / "train.npy", rows(0))
    (tmp_path / "stages").symlink_to(REPO / "stages")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"gkd": cfg.section()}))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "teacher": {"cmd": "puzzle-dsl run-stage teacher", "params": ["gkd.teacher_top_k"]},
        "gkd-sol0": {"cmd": "puzzle-dsl run-stage gkd sol0", "params": ["gkd"]}}}))
    monkeypatch.setenv("PUZZLE_TRACKING", "0")
    monkeypatch.chdir(tmp_path)

    run_stage("teacher", None, tmp_path)
    metrics = json.loads((tmp_path / layout.TEACHER_METRICS).read_text())
    assert metrics["tokens"] == rows(0).size and metrics["top_k"] == 16
    assert 0 < metrics["top_k_mass"] < 1
    shutil.rmtree(tmp_path / layout.PARENT_DIR)  # GKD must not need it
    run_stage("gkd", "sol0", tmp_path)
    gkd = json.loads((tmp_path / layout.gkd_metrics("sol0")).read_text())
    assert gkd["final_loss"] < gkd["first_loss"]
    assert (tmp_path / layout.gkd_dir("sol0") / "model.safetensors").is_file()
    assert os.listdir(tmp_path / layout.TEACHER_DIR)
