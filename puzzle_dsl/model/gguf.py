"""A child as a GGUF of llama.cpp's `deci` (Nemotron-NAS) architecture, tokenizer included.

Written tensor by tensor with the `gguf` package rather than llama.cpp's converter (which reads
FFN widths only from `ffn_mult` and DeciLM vocabularies only of 128256 tokens). The layout
follows what llama.cpp's deci graph computes, per layer:
    GQA attention     head_count H, head_count_kv K: attn_norm, attn_q/k/v, attn_output
    linear attention  head_count H, head_count_kv 0: attn_norm, attn_output (wo . norm(x))
    no-op attention   head_count 0: no tensors
    SwiGLU FFN        feed_forward_length W: ffn_norm, ffn_gate/up/down
    no-op FFN         a zero SwiGLU of ZERO_FFN_WIDTH: with width 0 the graph drops the
                      layer's attention output; a layer whose two subblocks are both no-op is
                      the identity and is left out
    linear FFN        not representable (refused: gguf_types.LINEAR_FFN)
q and k rows are permuted from HF's rotate-half RoPE order to llama.cpp's adjacent pairs.
f32 and f16 are written here; quantized types go through llama.cpp's own quantizer.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import torch

from puzzle_dsl.dsl.gguf_types import GGUF_TYPES, LINEAR_FFN, QUANTIZED, WRITTEN
from puzzle_dsl.model.gguf_vocab import add_tokenizer
from puzzle_dsl.pipeline.atomic import atomic_file

ZERO_FFN_WIDTH = 256  # a multiple of every quantizer's block, so quantized types still apply
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}


def refusals(config) -> list[str]:
    """Why llama.cpp cannot run this child (empty when it can), one reason per problem."""
    out = [f"layer {i}: linear FFN: {LINEAR_FFN}"
           for i in range(config.num_hidden_layers) if config.ffn_kind(i) == "linear"]
    if config.attention_bias or config.mlp_bias:
        out.append("attention_bias / mlp_bias: biases are not written to GGUF here")
    rope = dict(config.rope_parameters or {})
    if rope.get("rope_type", "default") not in ("default", "llama3"):
        out.append(f"rope_type {rope['rope_type']!r}: only default and llama3 RoPE are written")
    if all(config.attention_kind(i) == "no_op" and config.ffn_kind(i) == "no_op"
           for i in range(config.num_hidden_layers)):
        out.append("every layer is no-op: llama.cpp needs at least one block")
    return out


def kept_layers(config) -> list[int]:
    """Layers written to the GGUF: all but those whose attention and FFN are both no-op."""
    return [i for i in range(config.num_hidden_layers)
            if (config.attention_kind(i), config.ffn_kind(i)) != ("no_op", "no_op")]


def layer_shape(config, layer: int) -> tuple[int, int, int]:
    """(head_count, head_count_kv, feed_forward_length) of `layer` in llama.cpp's terms."""
    kind = config.attention_kind(layer)
    heads = 0 if kind == "no_op" else config.num_attention_heads
    width = config.ffn_intermediate_size(layer) or ZERO_FFN_WIDTH
    return heads, config.kv_heads(layer), width


def rope_to_pairs(w: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k projection rows from rotate-half order (per head: first halves, then second halves)
    to llama.cpp's adjacent-pair order. w: (heads * head_dim, in)."""
    head_dim = w.shape[0] // heads
    return w.reshape(heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(w.shape)


def llama3_rope_factors(rope: dict, head_dim: int) -> torch.Tensor:
    """The per-frequency divisors of Llama 3.1's RoPE scaling, (head_dim // 2,) float32."""
    inv_freq = 1.0 / rope["rope_theta"] ** (torch.arange(0, head_dim, 2).double() / head_dim)
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = ((old / wavelen - low) / (high - low)).clamp(0, 1)
    blended = 1 / ((1 - smooth) / factor + smooth)  # 1 at short wavelengths, factor at long
    return blended.float()


def _tensors(model) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, float32 tensor) of every tensor the deci graph reads, in file order."""
    cfg, sd = model.config, {k: v.detach().float() for k, v in model.state_dict().items()}
    out = [("token_embd.weight", sd["model.embed_tokens.weight"]),
           ("output_norm.weight", sd["model.norm.weight"])]
    if not cfg.tie_word_embeddings:
        out.append(("output.weight", sd["lm_head.weight"]))
    rope = dict(cfg.rope_parameters or {})
    if rope.get("rope_type") == "llama3":
        out.append(("rope_freqs.weight", llama3_rope_factors(rope, cfg.head_dim)))
    for n, i in enumerate(kept_layers(cfg)):
        src, dst = f"model.layers.{i}.", f"blk.{n}."
        kind = cfg.attention_kind(i)
        if kind != "no_op":
            out.append((dst + "attn_norm.weight", sd[src + "input_layernorm.weight"]))
        if kind == "gqa":
            heads, kv = cfg.num_attention_heads, cfg.kv_heads(i)
            out += [(dst + "attn_q.weight", rope_to_pairs(sd[src + "self_attn.q_proj.weight"], heads)),
                    (dst + "attn_k.weight", rope_to_pairs(sd[src + "self_attn.k_proj.weight"], kv)),
                    (dst + "attn_v.weight", sd[src + "self_attn.v_proj.weight"]),
                    (dst + "attn_output.weight", sd[src + "self_attn.o_proj.weight"])]
        elif kind == "linear":
            out.append((dst + "attn_output.weight", sd[src + "self_attn.linear_attn.weight"]))
        if cfg.ffn_kind(i) == "swiglu":
            out += [(dst + "ffn_norm.weight", sd[src + "post_attention_layernorm.weight"]),
                    (dst + "ffn_gate.weight", sd[src + "mlp.gate_proj.weight"]),
                    (dst + "ffn_up.weight", sd[src + "mlp.up_proj.weight"]),
                    (dst + "ffn_down.weight", sd[src + "mlp.down_proj.weight"])]
        else:  # no-op FFN after a kept attention: an exact zero SwiGLU
            h, w = cfg.hidden_size, ZERO_FFN_WIDTH
            out += [(dst + "ffn_norm.weight", torch.ones(h)),
                    (dst + "ffn_gate.weight", torch.zeros(w, h)),
                    (dst + "ffn_up.weight", torch.zeros(w, h)),
                    (dst + "ffn_down.weight", torch.zeros(h, w))]
    return out


def _add_hparams(writer: gguf.GGUFWriter, cfg, file_type: int) -> None:
    shapes = [layer_shape(cfg, i) for i in kept_layers(cfg)]
    writer.add_block_count(len(shapes))
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_head_count([s[0] for s in shapes])
    writer.add_head_count_kv([s[1] for s in shapes])
    writer.add_feed_forward_length([s[2] for s in shapes])
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(float((cfg.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(int(file_type))


def _write(model, tokenizer, path: Path, gguf_type: str, name: str) -> None:
    writer = gguf.GGUFWriter(str(path), arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.DECI])
    writer.add_name(name)
    _add_hparams(writer, model.config, FILE_TYPES[gguf_type])
    add_tokenizer(writer, tokenizer, model.config.vocab_size)
    for tensor_name, t in _tensors(model):
        array = t.numpy()
        if gguf_type == "f16" and array.ndim == 2:  # norms and RoPE factors stay float32
            array = array.astype(np.float16)
        writer.add_tensor(tensor_name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(src: str | Path, dst: str | Path, gguf_type: str, threads: int = 0) -> Path:
    """Quantize a GGUF with llama.cpp's own quantizer (llama-cpp-python's binding)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise RuntimeError(f"GGUF type {gguf_type!r} needs llama.cpp's quantizer: install "
                           "llama-cpp-python (./setup.sh does), or use f16 / f32") from exc
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED[gguf_type])
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {gguf_type} (status {status})")
    return Path(dst)


def as_nemotron_nas(model):
    """`model` in the child class: a plain transformers Llama (a parent) is re-wrapped with the
    same tensors (the parent's blocks in every layer); a child is returned as it is."""
    from puzzle_dsl.model.checkpoint import child_config_from_llama
    from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM

    if isinstance(model, NemotronNasForCausalLM):
        return model
    child = NemotronNasForCausalLM(child_config_from_llama(model.config)).eval()
    child.load_state_dict(model.state_dict())
    return child


def write_gguf(model, tokenizer, path: str | Path, gguf_type: str = "f16",
               name: str = "puzzle-child") -> Path:
    """Write `model` (NemotronNasForCausalLM or a transformers Llama, any dtype) and its
    tokenizer as one GGUF file.

    gguf_type: "f32", "f16" (written here) or a llama.cpp quantized type (QUANTIZED), which is
    quantized from an f32 file. The file appears only when complete.
    """
    model = as_nemotron_nas(model)
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"GGUF type {gguf_type!r} is not one of {list(GGUF_TYPES)}")
    problems = refusals(model.config)
    if problems:
        raise ValueError("llama.cpp cannot run this child: " + "; ".join(problems))
    path = Path(path)
    with atomic_file(path, mode=0o644) as tmp:
        if gguf_type in WRITTEN:
            _write(model, tokenizer, tmp, gguf_type, name)
        else:
            full = tmp.with_suffix(".f32")
            try:
                _write(model, tokenizer, full, "f32", name)
                quantize(full, tmp, gguf_type)
            finally:
                full.unlink(missing_ok=True)
    return path


def serve_command(gguf_name: str) -> str:
    """The one command that serves the file (llama.cpp's OpenAI-compatible server)."""
    return f"llama-server -m {gguf_name} --port 8080"
