"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_times(runs: dict[str, Callable[[], object]], repeats: int
                      ) -> dict[str, list[float]]:
    """Wall times of each callable, run in turn `repeats` times after one warm-up round.

    ONNX Runtime's worker threads spin for a while after a run; a short sleep lets the
    previous session's go idle so they do not steal the next one's cores.
    """
    for run in runs.values():
        run()  # first runs allocate memory and pick kernels
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            time.sleep(0.05)
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(top: list[float], bottom: list[float]) -> float:
    """Median of the per-repeat ratios: robust to a machine speeding up or slowing down."""
    return statistics.median(a / b for a, b in zip(top, bottom, strict=True))


def machine() -> str:
    """The CPU model and the vector extensions ONNX Runtime's kernels can use: ratios between
    runtimes depend on them (see shared/REFERENCE.md)."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "sve")
    extensions = " ".join(f for f in wanted if f in flags) or "unknown"
    return f"{model}, {os.cpu_count()} logical cores, vector extensions: {extensions}"
