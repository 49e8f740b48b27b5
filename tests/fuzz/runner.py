"""Run fuzz cases in forked children with a timeout, and classify what each run did.

Outcomes: ok (the run finished); clean (a typed OnnxplainError, or CLI exit 2, with a one-line
message); ort (such an error that only relays ONNX Runtime's failure); internal (an
OnnxplainError marked internal, a multi-line one, or a CLI internal error); traceback (any other
exception reaching the caller); hang (past the timeout); crash (the child died); modified (the
user's folder changed); partial (a failed CLI run left its output folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import select
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from click.testing import CliRunner

# Imported here, once: every forked run inherits them instead of importing them again.
import onnxplain
from cli.main import main as cli_main
from onnxplain.graph.inspect import describe_model
from onnxplain.graph.model import Model

from .mutate import MUTATIONS, mutate
from .seeds import Seed

OUTCOMES = ("ok", "clean", "ort", "internal", "traceback", "hang", "crash", "modified",
            "partial")
# A typed error that only passes on ONNX Runtime's failure: clean in form, but on a model the
# checker and the loader accepted it is most often onnxplain's own graph that failed.
ORT_FAILED = "ONNX Runtime failed"
RUNS = ("api-explain", "api-inspect", "cli-inspect", "cli-explain")
MEMORY_LIMIT = 3 << 30  # a giant declared dim must fail, not take the machine's memory


@dataclass(frozen=True)
class Case:
    seed: Seed
    mutation: str
    number: int

    @property
    def name(self) -> str:
        return f"{self.seed.name}/{self.mutation}/{self.number}"


@dataclass
class Result:
    case: str
    run: str
    outcome: str
    detail: str = ""


def draw_cases(seeds: list[Seed], count: int, seed: int = 0) -> list[Case]:
    """`count` cases, mutations in turn, seed models and mutation seeds drawn from `seed`."""
    rng = np.random.default_rng(seed)
    names = list(MUTATIONS)
    return [Case(seeds[int(rng.integers(len(seeds)))], names[i % len(names)],
                 int(rng.integers(2**31))) for i in range(count)]


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.relative_to(folder).parts[0].startswith("out-"):
            continue  # the runs' own output locations
        sha.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            sha.update(path.read_bytes())
    return sha.hexdigest()


def _write_case(case: Case, root: Path) -> Path:
    """root/user/{model.onnx, side files, inputs.npz}; root/outside.bin beside the folder."""
    user = root / "user"
    user.mkdir()
    mutant = mutate(case.seed.model, case.mutation, case.number)
    (user / "model.onnx").write_bytes(mutant.data)
    for rel, data in mutant.files.items():
        (user / rel).parent.mkdir(parents=True, exist_ok=True)
        (user / rel).write_bytes(data)
    np.savez(user / "inputs.npz", **case.seed.inputs)
    (root / "outside.bin").write_bytes(b"\x00" * 64)  # what an escaping location would read
    return user


def _one_line(text: str) -> bool:
    return len(str(text).strip().splitlines()) == 1


def _api(run: str, user: Path, inputs: dict) -> tuple[str, str]:
    try:
        if run == "api-inspect":
            describe_model(Model.load(str(user / "model.onnx")))
        else:
            explainer = onnxplain.Explainer(str(user / "model.onnx"), progress=False)
            explainer.explain(inputs, method="saliency")
    except onnxplain.OnnxplainError as err:
        if getattr(err, "internal", False) or not _one_line(err):
            return "internal", f"{type(err).__name__}: {err}"
        return "ort" if str(err).startswith(ORT_FAILED) else "clean", f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - what the fuzzer is looking for
        return "traceback", f"{type(err).__name__}: {str(err)[:300]}"
    return "ok", ""


def _cli(run: str, user: Path, out: Path) -> tuple[str, str]:
    model = str(user / "model.onnx")
    args = (["inspect", model] if run == "cli-inspect" else
            ["explain", model, "-i", str(user / "inputs.npz"), "-o", str(out), "-q"])
    result = CliRunner().invoke(cli_main, args)
    stderr = result.stderr.strip()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return "traceback", f"{type(result.exception).__name__}: {result.exception}"
    if result.exit_code == 0:
        return "ok", ""
    last = stderr.splitlines()[-1] if stderr else ""
    if result.exit_code == 2 and last.startswith(f"error: {ORT_FAILED}"):
        return "ort", last
    if result.exit_code == 2 and last.startswith("error:") and _one_line(stderr):
        return "clean", last
    if result.exit_code == 2 and last.startswith("error:"):
        return "clean", f"(noisy stderr) {last}"
    return "internal", f"exit {result.exit_code}: {last[:300]}"


def _child(run: str, user: Path, out: Path, inputs: dict, write_fd: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.environ["ONNXPLAIN_NO_PROGRESS"] = "1"
    try:
        outcome = _api(run, user, inputs) if run.startswith("api") else _cli(run, user, out)
    except BaseException as err:  # noqa: BLE001 - even a MemoryError in the harness is a result
        outcome = ("traceback", f"{type(err).__name__}: {str(err)[:300]}")
    os.write(write_fd, json.dumps(outcome).encode())
    os._exit(0)


def _fork_run(run: str, user: Path, out: Path, inputs: dict, timeout: float
              ) -> tuple[str, str]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(run, user, out, inputs, write_fd)
    os.close(write_fd)
    chunks, deadline = [], time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([read_fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return "hang", f"no result in {timeout:.0f} s"
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return "crash", f"child ended with status {status}"
    outcome, detail = json.loads(b"".join(chunks))
    return outcome, detail


def run_case(case: Case, runs: tuple[str, ...] = RUNS, timeout: float = 30.0) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxplain-fuzz-") as tmp:
        root = Path(tmp)
        user = _write_case(case, root)
        before = _digest(root)
        for run in runs:
            out = root / f"out-{run}"
            outcome, detail = _fork_run(run, user, out, case.seed.inputs, timeout)
            if _digest(root) != before:
                outcome, detail = "modified", f"{detail} (the user's folder changed)"
            elif outcome not in ("ok",) and out.exists():
                outcome, detail = "partial", f"{detail} (left {out.name} behind)"
            if out.exists():
                shutil.rmtree(out)  # a successful run's output: not the user's files
            results.append(Result(case.name, run, outcome, detail))
    return results


def run_cases(cases: list[Case], runs: tuple[str, ...] = RUNS, timeout: float = 30.0
              ) -> list[Result]:
    return [result for case in cases for result in run_case(case, runs, timeout)]


def table(results: list[Result]) -> str:
    """Outcome counts per run kind, and in total."""
    rows = {run: Counter() for run in dict.fromkeys(r.run for r in results)}
    for result in results:
        rows[result.run][result.outcome] += 1
    header = f"{'run':<14}{'runs':>7}" + "".join(f"{name:>11}" for name in OUTCOMES)
    lines = [header]
    total = Counter()
    for run, counts in rows.items():
        total.update(counts)
        lines.append(f"{run:<14}{sum(counts.values()):>7}"
                     + "".join(f"{counts[name]:>11}" for name in OUTCOMES))
    lines.append(f"{'all':<14}{sum(total.values()):>7}"
                 + "".join(f"{total[name]:>11}" for name in OUTCOMES))
    return "\n".join(lines)


PROBLEMS = ("ort", "internal", "traceback", "hang", "crash", "modified", "partial")


def failures(results: list[Result], outcomes: tuple[str, ...] = PROBLEMS) -> list[str]:
    return [f"{r.outcome:<9} {r.run:<12} {r.case}: {r.detail}" for r in results
            if r.outcome in outcomes]
