"""The issue-18 fuzzer at scale: thousands of mutated models through the API and the CLI.

    python benchmarks/fuzz.py [--cases 1000] [--seed 0] [--per-op 4] [--timeout 30]
                              [--runs api-explain,api-inspect,cli-inspect,cli-explain]
                              [--show 40]

Seeds are the single-op models of onnx.backend.test.case.node (--per-op of each op in
tests/fuzz/seeds.NODE_OPS) and a tiny CNN and MLP built in code; mutations are those of
tests/fuzz/mutate.MUTATIONS in turn. Every run is a forked child under a 3 GB address-space
limit and the timeout. Prints the table of outcomes (ok, clean, internal, traceback, hang,
crash, modified, partial) per run kind and the first --show failures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.runner import RUNS, draw_cases, failures, run_cases, table  # noqa: E402
from tests.fuzz.seeds import all_seeds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-op", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--show", type=int, default=40)
    args = parser.parse_args()
    start = time.perf_counter()
    seeds = all_seeds(per_op=args.per_op)
    cases = draw_cases(seeds, args.cases, seed=args.seed)
    results = run_cases(cases, tuple(args.runs.split(",")), args.timeout)
    print(f"{len(seeds)} seed models, {len(cases)} cases, {len(results)} runs in "
          f"{time.perf_counter() - start:.0f} s\n")
    print(table(results))
    for line in failures(results)[:args.show]:
        print(line[:400])


if __name__ == "__main__":
    main()
