"""Save and load parents and children as HF directories (safetensors only, no remote code run).

A child directory is self-contained: config.json (model_type nemotron-nas, architectures
DeciLMForCausalLM, block_configs, auto_map; the fields are described in
nemotron_nas/configuration_nemotron_nas.py), model.safetensors, the two shipped model files, tokenizer, generation_config.
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads it anywhere;
inside puzzle-dsl we always load through our own classes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase

from puzzle_dsl.model.nemotron_nas.configuration_nemotron_nas import NemotronNasConfig
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM
from puzzle_dsl.pipeline.atomic import atomic_dir

CHILD_CODE_DIR = Path(__file__).resolve().parent / "nemotron_nas"
CHILD_CODE_FILES = ("configuration_nemotron_nas.py", "modeling_nemotron_nas.py")
AUTO_MAP = {
    "AutoConfig": "configuration_nemotron_nas.NemotronNasConfig",
    "AutoModel": "modeling_nemotron_nas.NemotronNasModel",
    "AutoModelForCausalLM": "modeling_nemotron_nas.NemotronNasForCausalLM",
}
# the class name Nemotron-NAS engines (vLLM, TensorRT-LLM, llama.cpp's converter) dispatch on;
# loading with trust_remote_code still goes through AUTO_MAP to our classes
ARCHITECTURES = ("DeciLMForCausalLM",)
# config.json keys that belong to the Llama class, not to the child
_DROP_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")


def _config_dict(config) -> dict:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in d.items() if k not in _DROP_KEYS}


def child_config_from_llama(llama_config: LlamaConfig | dict,
                            block_configs: list[dict] | None = None) -> NemotronNasConfig:
    """A NemotronNasConfig with the parent's numbers; block_configs None = parent-identical.

    Also accepts a parent loaded by `load_parent` (a NemotronNasConfig with parent blocks);
    its own block_configs are then replaced. Heads per KV group of the parent come from
    `num_key_value_heads`.
    """
    d = _config_dict(llama_config)
    model_type = (llama_config.get("model_type") if isinstance(llama_config, dict)
                  else getattr(llama_config, "model_type", None))
    if model_type not in (None, "llama", NemotronNasConfig.model_type):
        raise ValueError(f"child_config_from_llama needs a Llama config, got model_type={model_type!r}")
    d["block_configs"] = block_configs
    return NemotronNasConfig(**d)


def _check_model_dir(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: expected an HF model directory")
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"{model_dir} has no *.safetensors weights (only safetensors are "
                                "loaded; convert .bin checkpoints with puzzle_dsl.model.parent.import_parent)")


def _load_weights(config: NemotronNasConfig, model_dir: Path,
                  dtype: torch.dtype) -> NemotronNasForCausalLM:
    """Our class + safetensors weights; every parameter must be in the file (lm_head may be tied)."""
    model, info = NemotronNasForCausalLM.from_pretrained(
        model_dir, config=config, dtype=dtype, use_safetensors=True, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"weights in {model_dir} do not match the model's block configs: {bad}")
    return model.eval()


def config_of(model_dir: str | Path) -> NemotronNasConfig:
    """The model config of a parent (Llama: parent block configs) or child directory."""
    model_dir = Path(model_dir)
    raw = json.loads((model_dir / "config.json").read_text())
    if raw.get("model_type") == "llama":
        return child_config_from_llama(LlamaConfig.from_pretrained(model_dir))
    if raw.get("model_type") == NemotronNasConfig.model_type:
        return NemotronNasConfig(**_config_dict(raw))
    raise ValueError(f"{model_dir}/config.json has model_type={raw.get('model_type')!r}; "
                     "expected a Llama parent or a nemotron-nas child")


def load_parent(model_dir: str | Path, dtype: torch.dtype = torch.float32
                ) -> tuple[NemotronNasForCausalLM, PreTrainedTokenizerBase]:
    """A plain Llama checkpoint loaded into the child class (parent block configs) + tokenizer."""
    model_dir = Path(model_dir)
    _check_model_dir(model_dir)
    raw = json.loads((model_dir / "config.json").read_text())
    if raw.get("model_type") != "llama":
        raise ValueError(f"{model_dir}/config.json has model_type={raw.get('model_type')!r}; "
                         "load_parent reads Llama checkpoints (use load_child for nemotron-nas)")
    model = _load_weights(config_of(model_dir), model_dir, dtype)
    return model, AutoTokenizer.from_pretrained(model_dir)


def load_parent_on_device(model_dir: str | Path) -> NemotronNasForCausalLM:
    """The parent in float32 on the GPU when there is one (what the measuring stages read)."""
    model, _ = load_parent(model_dir, dtype=torch.float32)
    return model.cuda() if torch.cuda.is_available() else model


def load_child(model_dir: str | Path, dtype: torch.dtype = torch.float32
               ) -> tuple[NemotronNasForCausalLM, PreTrainedTokenizerBase]:
    """A child directory through our own classes (its shipped .py files are never executed)."""
    model_dir = Path(model_dir)
    _check_model_dir(model_dir)
    raw = json.loads((model_dir / "config.json").read_text())
    if raw.get("model_type") != NemotronNasConfig.model_type:
        raise ValueError(f"{model_dir}/config.json has model_type={raw.get('model_type')!r}, "
                         "expected 'nemotron-nas' (use load_parent for Llama checkpoints)")
    config = config_of(model_dir)
    model = _load_weights(config, model_dir, dtype)
    # config= keeps AutoTokenizer from reading config.json's auto_map (no remote-code prompt)
    return model, AutoTokenizer.from_pretrained(model_dir, config=config)


def save_child(model: NemotronNasForCausalLM, tokenizer: PreTrainedTokenizerBase | None,
               out_dir: str | Path) -> Path:
    """Write a self-contained child directory atomically (replaces `out_dir` if present)."""
    out_dir = Path(out_dir)
    config = model.config
    config.auto_map = dict(AUTO_MAP)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        config.architectures = list(ARCHITECTURES)  # save_pretrained wrote our class name
        config.save_pretrained(tmp)
        for name in CHILD_CODE_FILES:
            shutil.copyfile(CHILD_CODE_DIR / name, tmp / name)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir
