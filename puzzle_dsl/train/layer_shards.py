"""Layer-sharded BLD under `torchrun`: the parent's forward as a pipeline of layer shards.

`PUZZLE_BLD_LAYER_SHARDS=S` splits the parent layers a BLD pass needs (0..last) into S
contiguous shards; the torchrun ranks form a grid of S shards x D = world / S data replicas
(rank = shard * D + replica). A rank loads only its shard's parent layers (and the embeddings
on shard 0; `load_parent_layers` leaves the rest on the meta device) and trains only the blocks
of those layers. Each batch's hidden states go from shard s to shard s + 1 of the same replica
(point-to-point, no gradient: BLD never back-propagates across layers), so a shard runs ahead
of the next by one batch. Replicas of a shard average gradients and loss statistics among
themselves, as data-parallel BLD does over the whole world. Blocks are independent, so the
library equals one process's within float tolerance.

Like the GKD sharding (train/sharding.py) this is how a run is laid out, not what it computes:
it lives in the launch environment, not in the recipe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from puzzle_dsl.train.distributed import rank_world

LAYER_SHARDS_ENV = "PUZZLE_BLD_LAYER_SHARDS"


def layer_shards_from_env() -> int:
    """S from PUZZLE_BLD_LAYER_SHARDS (default 1: every rank holds every layer)."""
    raw = os.environ.get(LAYER_SHARDS_ENV, "1").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{LAYER_SHARDS_ENV}={raw!r} must be a whole number of layer shards "
                         "(>= 1; it must divide the torchrun world size)")
    return int(raw)


def split_layers(n_layers: int, shards: int) -> list[range]:
    """`n_layers` layers as `shards` contiguous ranges, the first ones longer by one."""
    if shards > n_layers:
        raise ValueError(f"{shards} layer shards for {n_layers} layers: every shard needs a "
                         f"layer; set {LAYER_SHARDS_ENV} to at most {n_layers}")
    per, extra = divmod(n_layers, shards)
    bounds = [0]
    for s in range(shards):
        bounds.append(bounds[-1] + per + (s < extra))
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


@dataclass
class LayerGrid:
    """This rank's place in the shards x replicas grid and its parent layers."""

    shards: int = 1
    replicas: int = 1
    shard: int = 0
    replica: int = 0
    layers: range = range(0)
    replica_group: object = None  # the ranks of this shard (torch ProcessGroup; None: alone)
    shard_leads: object = None  # replica 0 of every shard (gathers the library to rank 0)

    @property
    def sharded(self) -> bool:
        return self.shards > 1

    def rank_of(self, shard: int, replica: int) -> int:
        return shard * self.replicas + replica

    def holds(self, layer: int) -> bool:
        return layer in self.layers

    def describe(self) -> dict:
        """What a checkpoint's fingerprint needs: the layout that wrote it."""
        return {"shards": self.shards, "shard": self.shard,
                "layers": [self.layers.start, self.layers.stop]}

    # ------------------------------------------------------------ the pipeline's hidden states
    def receive(self, shape: tuple[int, ...], dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
        """The hidden states (B, T, C) the previous shard sent for this batch."""
        buf = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(buf, src=self.rank_of(self.shard - 1, self.replica))
        return buf

    def send(self, hidden: torch.Tensor) -> None:
        """Hand this shard's last output to the next shard (no-op on the last shard)."""
        if self.shard + 1 < self.shards:
            dist.send(hidden.contiguous(), dst=self.rank_of(self.shard + 1, self.replica))

    # ------------------------------------------------------------ collectives among replicas
    def all_reduce_replicas_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over this shard's replicas, in place (no-op with one replica)."""
        if self.replicas > 1:
            dist.all_reduce(tensor, group=self.replica_group)
            tensor.div_(self.replicas)
        return tensor

    def gather_to_main(self, obj):
        """[obj of shard 0, .., shard S-1] on rank 0 (None elsewhere), from replica 0 of
        each shard. Objects travel pickled between our own ranks, never through a file."""
        if not self.sharded:
            return [obj]
        if self.replica != 0:
            return None
        out = [None] * self.shards if self.shard == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.shard_leads)
        return out


def layer_grid(n_layers: int, shards: int | None = None) -> LayerGrid:
    """This rank's grid over parent layers 0..n_layers-1 (collective: every rank calls it)."""
    shards = layer_shards_from_env() if shards is None else shards
    rank, world = rank_world()
    if world % shards:
        raise ValueError(f"{LAYER_SHARDS_ENV}={shards} must divide the {world} torchrun "
                         "processes (shards x data replicas); change it or --nproc-per-node")
    replicas = world // shards
    grid = LayerGrid(shards=shards, replicas=replicas, shard=rank // replicas,
                     replica=rank % replicas, layers=split_layers(n_layers, shards)[rank // replicas])
    if world > 1 and shards > 1:  # every rank makes every group, in the same order
        for s in range(shards):
            group = dist.new_group([s * replicas + r for r in range(replicas)])
            if s == grid.shard:
                grid.replica_group = group
        grid.shard_leads = dist.new_group([s * replicas for s in range(shards)])
    elif world > 1:
        grid.replica_group = dist.group.WORLD
    return grid


# ---------------------------------------------------------------- loading only a shard
def load_parent_layers(model_dir: str | Path, layers: range, *, embeddings: bool,
                       dtype: torch.dtype = torch.float32):
    """The parent with only `layers` (and the input embeddings if `embeddings`) read from its
    safetensors; every other parameter stays on the meta device, never allocated."""
    from safetensors import safe_open

    from puzzle_dsl.model.checkpoint import config_of, load_parent
    from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM

    model_dir = Path(model_dir)
    config = config_of(model_dir)
    if layers == range(config.num_hidden_layers) and embeddings:
        return load_parent(model_dir, dtype=dtype)[0]
    with torch.device("meta"):
        model = NemotronNasForCausalLM(config)
    prefixes = tuple(f"model.layers.{i}." for i in layers)
    prefixes += ("model.embed_tokens.",) if embeddings else ()
    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefixes):
                    tensors[key] = f.get_tensor(key).to(dtype)
    wanted = {k for k, _ in model.named_parameters() if k.startswith(prefixes)}
    if missing := sorted(wanted - set(tensors)):
        raise ValueError(f"{model_dir} lacks {len(missing)} tensors of the layers "
                         f"{layers.start}..{layers.stop - 1}: {missing[:3]}")
    model.load_state_dict(tensors, strict=False, assign=True)
    # rotary inverse frequencies are computed, not stored: make them real
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)
    return model.eval()


def materialised_layers(model) -> list[int]:
    """Indices of the decoder layers whose parameters are real (not on the meta device)."""
    return [i for i, layer in enumerate(model.model.layers)
            if any(not p.is_meta for p in layer.parameters())]


def move_materialised(model, device: torch.device):
    """`model.to(device)` for the real parameters only (meta ones cannot be copied)."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if not p.is_meta:
                module._parameters[name] = torch.nn.Parameter(p.data.to(device), p.requires_grad)
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and not b.is_meta:
                module._buffers[name] = b.to(device)
    return model
