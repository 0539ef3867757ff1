"""What a busy core does to the runtime table, and what the guard does about it (tiny parent).

Pins this process to one core with one torch thread and measures the parent's runtime
figures three ways: the reference (this thread's CPU time, which other processes cannot
inflate), wall time with a CPU burner on the same core and the guard off (what the stage
wrote before issue #21), and wall time with the burner and the guard on (the stage today).

Run: python benchmarks/timing_guard.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import torch

from puzzle_dsl.dsl import Scenario, Timing
from puzzle_dsl.dsl.space import parent_piece
from puzzle_dsl.model.checkpoint import load_parent
from puzzle_dsl.model.library import parent_shape_of
from puzzle_dsl.model.tiny import make_tiny_parent
from puzzle_dsl.runtime.guard import NoisyTiming
from puzzle_dsl.runtime.measure import measure_runtime

BURN = ("import os, sys, time\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"
        "end = time.time() + float(sys.argv[2])\nwhile time.time() < end:\n    pass\n")
SPACE = {"attention": {"kv1": {"kind": "gqa", "n_heads_in_group": 6, "layers": [0]}},
         "ffn": {"noop": {"kind": "no_op", "layers": [0, 1]}}}
OFF = {"max_spread": None, "max_wait": None, "parent_ratio": None}
ON = {"max_spread": 0.1, "max_wait": 0.1, "parent_ratio": [0.5, 2.0], "extra_rounds": 4}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    model, _ = load_parent(make_tiny_parent(tempfile.mkdtemp()))
    shape = parent_shape_of(model.config)
    extra = {sub: {"(parent)": parent_piece(sub, shape)} for sub in ("attention", "ffn")}
    layers = [{"attention": "(parent)", "ffn": "(parent)"}] * model.config.num_hidden_layers
    base = Scenario(batch_sizes=(2,), prefill_len=16, decode_len=16, warmup=1, repeats=5)

    def measure(timing: dict, clock: str = "wall") -> dict:
        sc = base.replace(timing=Timing(**timing))
        m = measure_runtime(model.config, SPACE, sc, extra, model, layers, clock=clock)
        return {**m.parent["2"], **m.conditions["2"]}

    ref = measure(OFF, clock="cpu")
    print(f"reference (CPU clock): parent {ref['time_s'] * 1e3:.1f} ms, "
          f"measured / predicted {ref['measured_over_predicted']:.2f}")
    burner = subprocess.Popen([sys.executable, "-c", BURN, str(core), str(args.seconds)])
    try:
        off = measure(OFF)
        print(f"burner, guard off: parent {off['time_s'] * 1e3:.1f} ms "
              f"({off['time_s'] / ref['time_s'] - 1:+.0%} vs reference), spread "
              f"{off['time_spread_s'] / off['time_s']:.0%}, measured / predicted "
              f"{off['measured_over_predicted']:.2f}, wait share {off['wait_share']:.0%}, "
              f"flagged under load: {off['under_load']}")
        try:
            on = measure(ON)
            print(f"burner, guard on: accepted, parent {on['time_s'] * 1e3:.1f} ms "
                  f"({on['time_s'] / ref['time_s'] - 1:+.0%} vs reference)")
        except NoisyTiming as refused:
            print(f"burner, guard on: refused:\n{refused}")
    finally:
        burner.kill()
        burner.wait()


if __name__ == "__main__":
    main()
