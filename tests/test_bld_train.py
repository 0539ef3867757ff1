"""The BLD loop: loss, optimiser helpers, training lowers the loss, determinism, independence."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from puzzle_dsl.bld.loss import normalized_mse
from puzzle_dsl.bld.train import VariantJob, make_block, train
from puzzle_dsl.dsl.recipe import BldCommon
from puzzle_dsl.dsl.schema import ParamsError
from puzzle_dsl.train.batches import TrainBatches
from puzzle_dsl.train.optim import clip_grad_norms, warmup_cosine

ATTN = {"kind": "gqa", "n_heads_in_group": 6}
FFN = {"kind": "swiglu", "intermediate_size": 48}


@pytest.fixture(scope="module")
def parent(tiny_parent_dir):
    from puzzle_dsl.model.checkpoint import load_parent

    model, _ = load_parent(tiny_parent_dir)
    return model


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "train.npy"
    np.save(path, np.random.default_rng(0).integers(0, 512, (40, 32)).astype(np.int32))
    return TrainBatches(path, batch_size=2, seed=0)


def _job(parent, name, subblock, spec, layers, init="paper"):
    job = VariantJob(name, subblock, spec)
    contributions = torch.arange(128.0)  # any ranking will do
    for i in layers:
        job.blocks[i] = make_block(parent, subblock, spec, i, init, 0, contributions, name=name)
    return job


def _settings(steps, **kw):
    return BldCommon(tokens=steps * 2 * 32, batch_size=2, lr=2e-3, warmup_frac=0.1, **kw)


def test_normalized_mse_is_zero_for_the_target_and_one_for_zeros():
    t = torch.randn(3, 5)
    assert normalized_mse(t, t) == 0
    torch.testing.assert_close(normalized_mse(torch.zeros_like(t), t), torch.tensor(1.0))


def test_warmup_rises_linearly_then_cosine_decays_to_zero():
    lrs = [warmup_cosine(s, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:])) and lrs[-1] < 0.01


def test_each_group_is_clipped_on_its_own():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    a.grad, b.grad = torch.full((3,), 10.0), torch.full((3,), 0.1)
    clip_grad_norms([[a], [b]], 1.0)
    torch.testing.assert_close(a.grad.norm(), torch.tensor(1.0))
    torch.testing.assert_close(b.grad, torch.full((3,), 0.1))  # untouched by a's large norm


def test_training_lowers_every_layers_loss_below_its_init(parent, batches):
    jobs = [_job(parent, "a", "attention", ATTN, range(4)), _job(parent, "f", "ffn", FFN, range(4))]
    train(parent, jobs, batches, batches(19), _settings(12), progress=False)
    for job in jobs:
        for i in range(4):
            assert job.final_loss[i] < job.init_loss[i], (job.name, i)


def test_same_seed_gives_bit_identical_blocks(parent, batches):
    runs = []
    for _ in range(2):
        job = _job(parent, "a", "attention", ATTN, [0, 2], init="random")
        train(parent, [job], batches, batches(19), _settings(3), progress=False)
        runs.append(job.state_dict())
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_a_variant_trained_beside_others_equals_it_trained_alone(parent, batches):
    alone = _job(parent, "f", "ffn", FFN, [1, 3])
    train(parent, [alone], batches, batches(19), _settings(3), progress=False)
    beside = _job(parent, "f", "ffn", FFN, [1, 3])
    other = _job(parent, "a", "attention", ATTN, [0, 1, 2])
    train(parent, [other, beside], batches, batches(19), _settings(3), progress=False)
    a, b = alone.state_dict(), beside.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_library_holds_only_the_trained_subblock_with_its_norm(parent):
    job = _job(parent, "f", "ffn", {"kind": "linear"}, [2])
    assert set(job.state_dict()) == {"layers.2.post_attention_layernorm.weight",
                                     "layers.2.mlp.linear_mlp.weight"}


def test_unknown_settings_are_rejected_with_the_known_keys():
    with pytest.raises(ParamsError, match="bld.common.lr_max is not a known key; .*known: .*lr"):
        BldCommon.from_params({"tokens": 10, "batch_size": 2, "lr_max": 1.0}, "bld.common")


def test_a_coupled_pair_trains_against_the_whole_layer(parent, batches):
    from puzzle_dsl.bld.train import make_pair_block

    job = VariantJob("pair", "pair", {"attention": ATTN, "ffn": FFN})
    job.blocks[1] = make_pair_block(parent, ATTN, FFN, 1, "paper", 0, torch.arange(128.0))
    train(parent, [job], batches, batches(19), _settings(12), progress=False)
    assert job.final_loss[1] < job.init_loss[1]
    assert {k.split(".")[2] for k in job.state_dict()} == {
        "input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}
