"""The issue-18 fuzzer at scale: thousands of mutated models through the API and the CLI.

    python benchmarks/fuzz.py [--cases 1000] [--seed 0] [--per-op 4] [--timeout 30]
                              [--runs api-explain,api-inspect,cli-inspect,cli-explain,
                                      cli-export,cli-export-check]
                              [--families model,in,opt,out] [--show 40]

Seeds are the single-op models of onnx.backend.test.case.node (--per-op of each op in
tests/fuzz/seeds.NODE_OPS) and a tiny CNN, MLP and one-head image transformer built in code;
mutations, in turn, are those of the model (tests/fuzz/mutate.MUTATIONS, through every run
kind) and of its surroundings (tests/fuzz/surface.SURFACES: input files "in:", method options
"opt:", output locations "out:", through the run kinds that read them). Every run is a
forked child under a 3 GB address-space limit and the timeout. Prints the table of outcomes
(ok, clean, ort, internal, traceback, hang, crash, modified, partial) per run kind and the
first --show failures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.runner import (  # noqa: E402
    ALL_MUTATIONS,
    RUNS,
    draw_cases,
    failures,
    run_cases,
    table,
)
from tests.fuzz.seeds import all_seeds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-op", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--families", default="model,in,opt,out")
    parser.add_argument("--show", type=int, default=40)
    args = parser.parse_args()
    start = time.perf_counter()
    seeds = all_seeds(per_op=args.per_op)
    families = set(args.families.split(","))
    names = tuple(n for n in ALL_MUTATIONS if (n.split(":")[0] if ":" in n else "model")
                  in families)
    cases = draw_cases(seeds, args.cases, seed=args.seed, names=names)
    results = run_cases(cases, tuple(args.runs.split(",")), args.timeout)
    print(f"{len(seeds)} seed models, {len(cases)} cases, {len(results)} runs in "
          f"{time.perf_counter() - start:.0f} s\n")
    print(table(results))
    for line in failures(results)[:args.show]:
        print(line[:400])


if __name__ == "__main__":
    main()
