"""What a timing was measured on and under: the machine, and how busy it was while timed.

`Probe` brackets one measurement round: wall time, how long this process's threads waited
on a run queue for a CPU (Linux schedstat: the direct cost of other processes on our cores),
CPU time other processes took on the cores this process may use (psutil: those cores' busy
time minus ours) and the load average.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import psutil

# a figure is flagged "under load" when other processes used this many cores on average, or
# the timed threads waited this share of the time for a CPU
UNDER_LOAD_CORES = 0.25
UNDER_LOAD_WAIT = 0.02


def _schedstat_ns() -> tuple[int, int] | None:
    """(CPU ns, run-queue wait ns) summed over this process's threads; None without schedstat."""
    cpu = wait = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, queued, _ = f.read().split()
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        cpu, wait = cpu + int(run), wait + int(queued)
    return cpu, wait


def allowed_cores() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _busy_s(cores: list[int]) -> float:
    """Busy CPU seconds so far of `cores` (all cores where per-CPU times do not match)."""
    per = psutil.cpu_times(percpu=True)
    picked = [per[c] for c in cores if c < len(per)] or per
    return sum(sum(t) - t.idle - getattr(t, "iowait", 0.0) for t in picked)


def _own_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


@dataclass(frozen=True)
class Load:
    """How busy the machine was during one measured interval."""

    wall_s: float
    wait_s: float | None  # run-queue wait of our threads (None: kernel without schedstat)
    others_cpu_s: float  # CPU seconds other processes used on the cores we may use
    threads: int  # compute threads of this process (torch intra-op threads)
    cores: int  # cores this process may use
    loadavg: tuple[float, float]  # 1-minute load average at the start and the end

    @property
    def wait_share(self) -> float | None:
        """Share of the interval our compute threads spent waiting for a CPU."""
        if self.wait_s is None or self.wall_s <= 0:
            return None
        return self.wait_s / (self.wall_s * max(1, self.threads))

    @property
    def others_cores(self) -> float:
        """Cores' worth of CPU other processes used on average (on the cores we may use)."""
        return self.others_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def contention(self) -> float:
        """The wait share; without schedstat, the share of our cores others kept busy."""
        share = self.wait_share
        return share if share is not None else self.others_cores / max(1, self.cores)


class Probe:
    """`with Probe(threads) as p: ...` then `p.load`: the Load of the block."""

    def __init__(self, threads: int = 1) -> None:
        self.threads, self.load = threads, None
        self._proc, self._cores = psutil.Process(), allowed_cores()

    def __enter__(self) -> Self:
        self._avg = os.getloadavg()[0]
        self._sched, self._own = _schedstat_ns(), _own_s(self._proc)
        self._busy = _busy_s(self._cores)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t0
        sched = _schedstat_ns()
        wait = (max(0, sched[1] - self._sched[1]) / 1e9 if sched and self._sched else None)
        others = (_busy_s(self._cores) - self._busy) - (_own_s(self._proc) - self._own)
        self.load = Load(wall, wait, max(0.0, others), self.threads, len(self._cores),
                         (self._avg, os.getloadavg()[0]))


def summarize(loads: Sequence[Load]) -> dict:
    """The conditions of a whole measurement (its kept rounds), flagged when under load."""
    wall = sum(x.wall_s for x in loads)
    waits = [x.wait_share for x in loads if x.wait_share is not None]
    others = sum(x.others_cpu_s for x in loads)
    out = {"wall_s": wall, "cores_allowed": loads[0].cores if loads else None,
           "others_cpu_s": others,
           "others_cores": others / wall if wall else 0.0,
           "wait_share": (sum(x.wait_s for x in loads if x.wait_s is not None)
                          / sum(x.wall_s * max(1, x.threads) for x in loads)) if waits else None,
           "max_round_wait_share": max(waits) if waits else None,
           "loadavg_start": loads[0].loadavg[0] if loads else None,
           "loadavg_max": max(max(x.loadavg) for x in loads) if loads else None}
    out["under_load"] = bool(out["others_cores"] >= UNDER_LOAD_CORES
                             or (out["wait_share"] or 0.0) >= UNDER_LOAD_WAIT)
    return out


def describe(conditions: dict) -> str:
    """One line for logs, tables and model cards."""
    wait = conditions.get("wait_share")
    return (f"other processes used {conditions['others_cores']:.2f} of "
            f"{conditions.get('cores_allowed', '?')} cores on average"
            + (f", the timed threads waited {wait:.1%} of the time for a CPU" if wait is not None
               else "")
            + f", load average up to {conditions.get('loadavg_max') or 0:.2f}")


ENGINE_NAMES = {"transformers": "transformers generate (PyTorch eager)",
                "llama.cpp": "llama.cpp (llama-cpp-python), batched greedy decode"}


def machine_info(device: str, engine: str = "transformers") -> dict:
    """What the numbers were measured on: CPU, cores, threads, engine and versions."""
    import torch
    import transformers

    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "cores_allowed": len(allowed_cores()),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "device": device,
            "engine": ENGINE_NAMES[engine]}
    if engine == "llama.cpp":
        import llama_cpp

        from puzzle_dsl.model.llama_cpp import threads

        info |= {"llama_cpp_python": llama_cpp.__version__, "threads": threads()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or sys.platform
