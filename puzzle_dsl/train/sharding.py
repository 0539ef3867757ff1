"""FSDP2 sharding of decoder models and layout-free training checkpoints.

`PUZZLE_GKD_SHARDING=fsdp` under `torchrun` shards the child and the frozen parent with
`torch.distributed.fsdp.fully_shard` (one unit per decoder layer, then the rest), so no rank holds
either model whole; the default `ddp` replicates them (train/distributed.py). The choice is how a
run is laid out, not what it computes: it lives in the launch environment, not in the recipe.

Mixed precision (`PUZZLE_GKD_PARAM_DTYPE`, default `auto`: bfloat16 on CUDA, float32 on the
CPU): FSDP2 keeps the sharded master weights and the optimizer in float32, gathers and computes
in the given dtype, and reduces gradients in float32.

Activation recomputation (`PUZZLE_GKD_RECOMPUTE=1`, default off): the child keeps only each
decoder layer's input for the backward pass and recomputes the layer there, trading about a
third more child compute for activation memory (docs/scale.md: a 70B GKD needs it).

Checkpoints are folders written by torch.distributed.checkpoint (DCP) in its Hugging Face
safetensors storage: every rank writes its own shards, and a checkpoint loads into any layout
(one process, DDP replicas, or FSDP over another number of ranks), DCP resharding on load.
Tensors are safetensors and the rest (`state.pt`: step, scheduler, RNG, log, optimizer
hyper-parameters) is read with `torch.load(weights_only=True)`: nothing is unpickled.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch

from puzzle_dsl.train.distributed import barrier, rank_world

SHARDING_ENV = "PUZZLE_GKD_SHARDING"
SHARDINGS = ("ddp", "fsdp")
PARAM_DTYPE_ENV = "PUZZLE_GKD_PARAM_DTYPE"
RECOMPUTE_ENV = "PUZZLE_GKD_RECOMPUTE"
SWITCH = {"0": False, "off": False, "false": False, "no": False,
          "1": True, "on": True, "true": True, "yes": True}
PARAM_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
STATE_FILE = "state.pt"
TENSORS_DIR = "tensors"


def sharding_from_env() -> str:
    """`ddp` (default) or `fsdp`, from PUZZLE_GKD_SHARDING."""
    value = os.environ.get(SHARDING_ENV, "ddp").strip().lower()
    if value not in SHARDINGS:
        raise ValueError(f"{SHARDING_ENV}={value!r} is not a sharding; use one of "
                         f"{', '.join(SHARDINGS)} (fsdp: FSDP2 under torchrun)")
    return value


def recompute_from_env() -> bool:
    """Whether GKD recomputes the child's decoder layers in the backward (PUZZLE_GKD_RECOMPUTE)."""
    value = os.environ.get(RECOMPUTE_ENV, "0").strip().lower()
    if value not in SWITCH:
        raise ValueError(f"{RECOMPUTE_ENV}={value!r} is not a switch; use 1 (recompute each "
                         f"layer in the backward, less memory) or 0 (keep activations)")
    return SWITCH[value]


def param_dtype_from_env(device: torch.device) -> torch.dtype | None:
    """The dtype FSDP computes in, from PUZZLE_GKD_PARAM_DTYPE: None means float32 throughout;
    `auto` (default) is bfloat16 on CUDA and float32 elsewhere."""
    value = os.environ.get(PARAM_DTYPE_ENV, "auto").strip().lower()
    if value == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if value not in PARAM_DTYPES:
        raise ValueError(f"{PARAM_DTYPE_ENV}={value!r} is not a compute dtype; use auto or one "
                         f"of {', '.join(PARAM_DTYPES)}")
    return PARAM_DTYPES[value]


def shard_decoder(model: torch.nn.Module, param_dtype: torch.dtype | None = None) -> None:
    """FSDP2 in place: each decoder layer that has parameters is a unit, the root holds the rest
    (embeddings, final norm, a tied LM head). `param_dtype`: compute in it (master weights and
    gradient reduction stay float32). Needs a process group."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = ({"mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype,
                                                 reduce_dtype=torch.float32)}
              if param_dtype is not None else {})
    for layer in model.model.layers:
        if next(layer.parameters(), None) is not None:  # a no-op/no-op layer has none
            fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def load_sharded(model_dir: str | Path, device: torch.device,
                 param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A parent or child directory loaded straight into FSDP2 shards: the model is built on the
    meta device, sharded (`shard_decoder`), this rank's shards allocated on `device` and filled
    from the safetensors one tensor at a time, so no rank ever holds the whole model."""
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor, distribute_tensor
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from puzzle_dsl.model.checkpoint import config_of
    from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM

    model_dir = Path(model_dir)
    config = config_of(model_dir)
    with torch.device("meta"):
        model = NemotronNasForCausalLM(config)
    shard_decoder(model, param_dtype)
    model.to_empty(device=device)
    files = sorted(model_dir.glob("*.safetensors"))
    where = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            where |= dict.fromkeys(f.keys(), file)
    with torch.no_grad():
        for name, param in model.named_parameters():  # a tied LM head is listed once
            if name not in where:
                raise ValueError(f"{model_dir} has no tensor {name}: its weights do not match "
                                 "its config.json")
            with safe_open(str(where[name]), framework="pt") as f:
                full = f.get_tensor(name).to(device=device, dtype=param.dtype)
            if isinstance(param, DTensor):  # this rank's slice, cut here: no communication
                full = distribute_tensor(full, param.device_mesh, param.placements,
                                         src_data_rank=None).to_local()
                param.to_local().copy_(full)
            else:
                param.copy_(full)
    # rotary frequencies are computed, not stored: to_empty left them uninitialised
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config).to(device)
    return model.eval()


def local_numel(model: torch.nn.Module) -> int:
    """Parameter elements this rank holds (its shards under FSDP)."""
    return sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in model.parameters())


def is_sharded(model: torch.nn.Module) -> bool:
    """True once `shard_decoder` (FSDP2) has sharded `model`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A sharded model's whole state dict as CPU tensors on rank 0 ({} on the other ranks); a
    collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))


def _flat(model: torch.nn.Module, model_sd: dict, optim_sd: dict) -> dict[str, torch.Tensor]:
    """One flat name -> tensor dict; a tied weight (an LM head sharing the embedding) once: the
    load fills the one parameter both names view."""
    unique = {n for n, _ in model.named_parameters()}
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - unique
    flat = {f"model.{k}": v for k, v in model_sd.items() if k not in aliases}
    for fqn, state in optim_sd["state"].items():
        flat.update({f"optim.{fqn}.{k}": v for k, v in state.items()})
    return flat


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict) -> None:
    """Write the checkpoint folder `path` (a collective: every rank calls it).

    All ranks write into `<path>.tmp`, which rank 0 then renames to `path` (the old one goes
    after): a run killed mid-save keeps its previous checkpoint or none, never a half one.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    rank, world = rank_world()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.save(_flat(model, model_sd, optim_sd), no_dist=world == 1,
                 storage_writer=HuggingFaceStorageWriter(str(tmp / TENSORS_DIR),
                                                         save_distributed=world > 1))
    if rank == 0:
        torch.save({**extra, "param_groups": optim_sd["param_groups"]}, tmp / STATE_FILE)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    fingerprint: str) -> dict | None:
    """Load the checkpoint folder into `model` and `optimizer` (any layout) and return its extra
    state, if it exists and belongs to this run (same `fingerprint`); else None, touching nothing."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    if not (path / STATE_FILE).is_file():
        return None
    extra = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    if extra.get("fingerprint") != fingerprint:
        return None
    model_sd, optim_sd = get_state_dict(model, optimizer)  # the optimizer's state initialised
    flat = _flat(model, model_sd, optim_sd)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.load(flat, no_dist=rank_world()[1] == 1,
                 storage_reader=HuggingFaceStorageReader(str(path / TENSORS_DIR)))
    groups = extra.pop("param_groups")
    set_state_dict(model, optimizer, model_state_dict=model_sd,
                   optim_state_dict={"state": optim_sd["state"], "param_groups": groups})
    return extra


def remove_checkpoint(path: str | Path) -> None:
    """The checkpoint folder and any temporary or old copy of it."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")):
        shutil.rmtree(p, ignore_errors=True)
