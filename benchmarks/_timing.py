"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial


def interleaved_times(runs: dict[str, Callable[[], object]], repeats: int,
                      clock: Callable[[], float] = time.perf_counter
                      ) -> dict[str, list[float]]:
    """Wall times (or `clock`'s) of each callable, run in turn `repeats` times after one
    warm-up round.

    ONNX Runtime's worker threads spin for a while after a run; a short sleep lets the
    previous session's go idle so they do not steal the next one's cores.
    """
    for run in runs.values():
        run()  # first runs allocate memory and pick kernels
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            time.sleep(0.05)
            start = clock()
            run()
            times[name].append(clock() - start)
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


def peak_rss() -> int:
    """This process's peak resident set size in bytes. Linux keeps getrusage's ru_maxrss
    across exec, so a child forked from a big parent would report the parent's peak;
    VmHWM belongs to the process's own address space."""
    import resource

    return _status_bytes("VmHWM:") or resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def rss() -> int:
    """This process's resident set now, after a collection (what a loaded model keeps)."""
    gc.collect()
    return _status_bytes("VmRSS:")


def peak_rss_of(pid: int) -> int:
    """Another process's peak resident set in bytes (0 once it has exited)."""
    return _status_bytes("VmHWM:", pid)


def _status_bytes(field: str, pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def methods_against_forward(path, feeds: dict, forward: Callable[[], object],
                            methods: Sequence[str], repeats: int
                            ) -> tuple[dict[str, tuple[list[float], list[float]]], float]:
    """Each method's explain() interleaved with `forward`: {method: (its times, the forward's
    times)} and the median forward time over all of them."""
    import onnxplain

    times = {}
    for method in methods:
        # A fresh Explainer per method, alone with the forward: idle worker threads of
        # other methods' sessions would share the cores.
        explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
        pair = interleaved_times({"forward": forward,
                                  method: partial(explainer.explain, feeds, method)}, repeats)
        times[method] = (pair[method], pair["forward"])
        del explainer
        gc.collect()
    base = statistics.median(t for _, forwards in times.values() for t in forwards)
    return times, base


def print_ratios(times: dict[str, tuple[list[float], list[float]]],
                 targets: dict[str, float | None]) -> None:
    """One line per method: its median time and its ratio to the forward, against the
    target where one is set."""
    for method, target in targets.items():
        own, forwards = times[method]
        ratio = median_ratio(own, forwards)
        goal = f" (target <= {target})" if target else ""
        verdict = "" if target is None else ("  met" if ratio <= target else "  NOT MET")
        print(f"  {method:24s} {statistics.median(own) * 1e3:8.1f} ms  "
              f"{ratio:5.2f} x forward{goal}{verdict}")
