"""llama.cpp in this process (llama-cpp-python's low-level binding): loaded once, quiet, on
every core this process may use."""

from __future__ import annotations

import os

_QUIET = None  # llama.cpp's log callback, kept alive for the process


def binding():
    """The llama_cpp module, backend initialised and its log silenced."""
    global _QUIET
    try:
        import llama_cpp as lc
    except ImportError as exc:
        raise RuntimeError("llama.cpp needs llama-cpp-python: run ./setup.sh (or pip install "
                           "'puzzle-dsl[llama]')") from exc
    if _QUIET is None:
        _QUIET = lc.llama_log_callback(lambda level, text, data: None)
        lc.llama_backend_init()
        lc.llama_log_set(_QUIET, None)
    return lc


def threads() -> int:
    """llama.cpp threads: every core this process may run on (as torch uses them)."""
    return len(os.sched_getaffinity(0))


# llama.cpp's CPU flash-attention path decodes SmolLM2 at batch 16 about 30% slower than the
# plain one on this 2-core machine (131 vs 102 tokens/s, f32, 2026-12-02): off (0), not auto.
FLASH_ATTENTION = 0


def context(model, n_ctx: int, n_batch: int, n_seq: int, n_threads: int | None = None):
    """A llama.cpp context for `n_seq` sequences over `n_ctx` cells, `n_batch` tokens a
    decode; None when llama.cpp refuses (it makes none for a model without attention)."""
    lc = binding()
    params = lc.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = n_seq
    params.n_threads = params.n_threads_batch = n_threads or threads()
    params.flash_attn_type = FLASH_ATTENTION
    return lc.llama_init_from_model(model, params) or None
