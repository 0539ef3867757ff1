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
