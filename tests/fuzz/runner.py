"""Run fuzz cases in forked children with a timeout, and classify what each run did.

Cases are model mutations (mutate.MUTATIONS, through every run kind) or mutations of what
surrounds an unchanged seed model (surface.SURFACES: input files, method options, output
locations; through the run kinds that read them).

Outcomes: ok (the run finished); clean (a typed OnnxplainError, or CLI exit 2, with a one-line
message); ort (such an error that only relays ONNX Runtime's failure); internal (an
OnnxplainError marked internal, a multi-line one, or a CLI internal error); traceback (any other
exception reaching the caller); hang (past the timeout); crash (the child died, a loaded
pickle included); modified (a file there before the run changed, or the run wrote into the
user's folder; a run that succeeds may replace an earlier run's files at its -o location);
partial (a failed CLI run left anything behind).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from click.testing import CliRunner

# Imported here, once: every forked run inherits them instead of importing them again.
import onnxplain
from cli.main import main as cli_main
from onnxplain.describe import describe_model
from onnxplain.graph.model import Model

from .mutate import MUTATIONS, mutate
from .seeds import CODE_SEEDS, Seed
from .surface import SURFACES, surface

OUTCOMES = ("ok", "clean", "ort", "internal", "traceback", "hang", "crash", "modified",
            "partial")
# A typed error that only passes on ONNX Runtime's failure: clean in form, but on a model the
# checker and the loader accepted it is most often onnxplain's own graph that failed.
ORT_FAILED = "ONNX Runtime failed"
RUNS = ("api-explain", "api-inspect", "cli-inspect", "cli-explain", "cli-export",
        "cli-export-check")
# The run kinds that read what each family mutates (model mutations: every kind).
FAMILY_RUNS = {"model": RUNS, "in": ("cli-explain", "api-explain"),
               "opt": ("cli-explain", "api-explain", "cli-export"),
               "out": ("cli-explain", "cli-export")}
NOBODY = 65534  # the user a read-only folder is read-only to (root writes anywhere)
MEMORY_LIMIT = 3 << 30  # a giant declared dim must fail, not take the machine's memory


@dataclass(frozen=True)
class Case:
    seed: Seed
    mutation: str
    number: int

    @property
    def name(self) -> str:
        return f"{self.seed.name}/{self.mutation}/{self.number}"

    @property
    def family(self) -> str:
        return self.mutation.split(":")[0] if ":" in self.mutation else "model"


@dataclass
class Setup:
    """A case written out: the user's folder, the -i argument, the API's arrays, extra CLI
    arguments, the API's keyword arguments and the output location's kind."""

    user: Path
    spec: Path
    arrays: dict
    cli: list[str] = field(default_factory=list)
    api: dict = field(default_factory=dict)
    out: str = ""


@dataclass
class Result:
    case: str
    run: str
    outcome: str
    detail: str = ""


ALL_MUTATIONS = (*MUTATIONS, *SURFACES)


def draw_cases(seeds: list[Seed], count: int, seed: int = 0,
               names: tuple[str, ...] = ALL_MUTATIONS) -> list[Case]:
    """`count` cases, mutations in turn, seed models and mutation seeds drawn from `seed`.
    Surface mutations mostly get a model built in code (one every method can run on)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        name = names[i % len(names)]
        pool = seeds[:CODE_SEEDS] if ":" in name and rng.random() < 0.7 else seeds
        cases.append(Case(pool[int(rng.integers(len(pool)))], name, int(rng.integers(2**31))))
    return cases


def runs_for(case: Case, runs: tuple[str, ...]) -> tuple[str, ...]:
    """The asked-for runs that read what `case` mutates, else one that does."""
    allowed = FAMILY_RUNS[case.family]
    return tuple(r for r in runs if r in allowed) or (allowed[case.number % len(allowed)],)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` with a digest of its bytes ("dir" for folders)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        found[rel] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                      else "dir")
    return found


def _write_case(case: Case, root: Path) -> Setup:
    """root/user/{model.onnx, side files, inputs}; root/outside.bin beside the folder."""
    user = root / "user"
    user.mkdir()
    if case.family == "model":
        mutant = mutate(case.seed.model, case.mutation, case.number)
        model, files, changed = mutant.data, mutant.files, Setup(user, user / "inputs.npz",
                                                                 case.seed.inputs)
    else:
        surf = surface(case.seed.model, case.seed.inputs, case.mutation, case.number)
        model = (surf.model or case.seed.model).SerializeToString()
        files = surf.files
        arrays = case.seed.inputs if surf.arrays is None else surf.arrays
        changed = Setup(user, user / surf.spec, arrays, surf.cli, surf.api, surf.out)
    (user / "model.onnx").write_bytes(model)
    np.savez(user / "inputs.npz", **case.seed.inputs)
    for rel, data in files.items():
        (user / rel).parent.mkdir(parents=True, exist_ok=True)
        (user / rel).write_bytes(data)
    (root / "outside.bin").write_bytes(b"\x00" * 64)  # what an escaping location would read
    return changed


def _prepare_out(kind: str, root: Path, run: str) -> Path:
    """The -o argument of `run` for an output location of `kind`, its surroundings made."""
    export = run.startswith("cli-export")
    name = "e.onnx" if export else "result"
    if kind == "readonly":
        folder = root / "out-ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / name
    if kind == "unwritable":
        return Path("/proc/self/onnxplain-fuzz") / name
    if kind in ("file", "under_file"):
        taken = root / "out-file"
        taken.write_bytes(b"the user's file")
        return taken / name if export or kind == "under_file" else taken
    if kind == "long_out":
        return root / ("out-" + "a" * 300 + (".onnx" if export else ""))
    if kind in ("existing_dir", "earlier_run", "disk_full"):
        folder = root / "out-dir"
        folder.mkdir()
        (folder / "keep.txt").write_bytes(b"the user's notes")
        if kind != "existing_dir":  # what an earlier run left: a run must keep or replace it
            _earlier_run(folder)
        return folder / name if export and kind != "existing_dir" else folder
    return root / f"out-{run}{'.onnx' if export else ''}"


def _earlier_run(folder: Path) -> None:
    np.save(folder / "attribution.npy", np.arange(6, dtype=np.float32))
    (folder / "heatmap_x_0.png").write_bytes(b"an earlier heatmap")
    (folder / "e.onnx").write_bytes(b"an earlier export")
    summary = {"method": "saliency", "files": ["attribution.npy", "heatmap_x_0.png",
                                               "summary.json"]}
    (folder / "summary.json").write_text(json.dumps(summary))


def _disk_full() -> None:
    """In the child: the disk fills up while the run writes its last files (summary.json,
    the exported model), after the ones before them were written."""
    import errno

    from cli import local_head, outputs

    def full(path, *args) -> None:
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    outputs.save_json = full
    local_head.save_bytes = full


def _one_line(text: str) -> bool:
    return len(str(text).strip().splitlines()) == 1


def _api(run: str, setup: Setup) -> tuple[str, str]:
    model = str(setup.user / "model.onnx")
    try:
        if run == "api-inspect":
            describe_model(Model.load(model))
        else:
            explainer = onnxplain.Explainer(model, progress=False)
            explainer.explain(setup.arrays, **{"method": "saliency", **setup.api})
    except onnxplain.OnnxplainError as err:
        if getattr(err, "internal", False) or not _one_line(err):
            return "internal", f"{type(err).__name__}: {err}"
        return "ort" if str(err).startswith(ORT_FAILED) else "clean", f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - what the fuzzer is looking for
        return "traceback", f"{type(err).__name__}: {str(err)[:300]}"
    return "ok", ""


def _cli_args(run: str, setup: Setup, out: Path) -> list[str]:
    model = str(setup.user / "model.onnx")
    if run == "cli-inspect":
        return ["inspect", model]
    if run == "cli-explain":
        return ["explain", model, "-i", str(setup.spec), "-o", str(out), "-q", *setup.cli]
    check = ["--check", "-i", str(setup.spec)] if run == "cli-export-check" else []
    return ["export", model, "-o", str(out), "-q", *check, *setup.cli]


def _cli(run: str, setup: Setup, out: Path) -> tuple[str, str]:
    result = CliRunner().invoke(cli_main, _cli_args(run, setup, out))
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
    said = [line for line in stderr.splitlines() if line.startswith("error:")] or [last]
    return "internal", f"exit {result.exit_code}: {said[0][:300]}"


def _child(run: str, setup: Setup, out: Path, write_fd: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    if setup.out == "readonly" and os.geteuid() == 0:
        import encodings.cp437  # noqa: F401 - zipfile's, imported late; nobody cannot read it
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.environ["ONNXPLAIN_NO_PROGRESS"] = "1"
    if setup.out == "disk_full":
        _disk_full()
    try:
        outcome = _api(run, setup) if run.startswith("api") else _cli(run, setup, out)
    except BaseException as err:  # noqa: BLE001 - even a MemoryError in the harness is a result
        outcome = ("traceback", f"{type(err).__name__}: {str(err)[:300]}")
    os.write(write_fd, json.dumps(outcome).encode())
    os._exit(0)


def _fork_run(run: str, setup: Setup, out: Path, timeout: float) -> tuple[str, str]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(run, setup, out, write_fd)
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


def _judge(outcome: str, detail: str, before: dict, after: dict, out: str = ""
           ) -> tuple[str, str]:
    """`out`: the -o location (relative to the case's root), which a run that succeeds may
    write over (an earlier run's files), the user's own file in it aside."""
    changed = [p for p, digest in before.items() if after.get(p) != digest and not (
        outcome == "ok" and out and (p == out or p.startswith(out + "/"))
        and not p.endswith("keep.txt"))]
    new = [p for p in after if p not in before]
    if changed or any(p.startswith("user") for p in new):
        where = (changed or [p for p in new if p.startswith("user")])[0]
        return "modified", f"{detail} ({where[:80]} changed)"
    if outcome != "ok" and new:
        return "partial", f"{detail} (left {new[0][:80]} behind)"
    return outcome, detail


def _clean(root: Path, before: dict) -> None:
    """Undo a run: its new paths go, read-only folders are writable again."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir():
            path.chmod(0o755)
    for rel in sorted(set(_snapshot(root)) - set(before), reverse=True):
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def run_case(case: Case, runs: tuple[str, ...] = RUNS, timeout: float = 30.0) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxplain-fuzz-") as tmp:
        root = Path(tmp)
        setup = _write_case(case, root)
        if setup.out == "readonly":
            for path in [root, *root.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)  # readable by nobody
        for run in runs_for(case, runs):
            out = _prepare_out(setup.out, root, run)
            before = _snapshot(root)
            outcome, detail = _fork_run(run, setup, out, timeout)
            where = str(out.relative_to(root)) if out.is_relative_to(root) else ""
            outcome, detail = _judge(outcome, detail, before, _snapshot(root), where)
            _clean(root, before)
            for made in ("out-ro", "out-file", "out-dir"):  # the next run prepares its own
                if (root / made).is_dir():
                    shutil.rmtree(root / made)
                elif (root / made).exists():
                    (root / made).unlink()
            results.append(Result(case.name, run, outcome, detail))
    return results


def run_cases(cases: list[Case], runs: tuple[str, ...] = RUNS, timeout: float = 30.0
              ) -> list[Result]:
    return [result for case in cases for result in run_case(case, runs, timeout)]


def run_plan_apart(plan: list[tuple[Case, tuple[str, ...]]], timeout: float = 30.0
                   ) -> list[Result]:
    """Each (case, runs) of `plan` through run_case, forked from a fresh interpreter: a fork
    of a process that holds other threads (ONNX Runtime's pools, a Ray client's, tqdm's
    monitor: a test session's) can leave the child waiting on a lock one of them held."""
    with tempfile.TemporaryDirectory(prefix="onnxplain-fuzz-plan-") as tmp:
        plan_file, results_file = Path(tmp) / "plan.pickle", Path(tmp) / "results.pickle"
        plan_file.write_bytes(pickle.dumps((plan, timeout)))
        subprocess.run([sys.executable, "-m", "tests.fuzz.runner", str(plan_file),
                        str(results_file)], check=True, cwd=Path(__file__).parents[2])
        return pickle.loads(results_file.read_bytes())


def _run_plan_file(plan_file: str, results_file: str) -> None:
    plan, timeout = pickle.loads(Path(plan_file).read_bytes())
    results = [result for case, runs in plan for result in run_case(case, runs, timeout)]
    Path(results_file).write_bytes(pickle.dumps(results))


if __name__ == "__main__":
    # Through the package's module, so that what is pickled names tests.fuzz.runner's classes.
    from tests.fuzz.runner import _run_plan_file as run_plan_file
    run_plan_file(*sys.argv[1:])


def table(results: list[Result]) -> str:
    """Outcome counts per run kind, and in total."""
    rows = {run: Counter() for run in dict.fromkeys(r.run for r in results)}
    for result in results:
        rows[result.run][result.outcome] += 1
    header = f"{'run':<18}{'runs':>7}" + "".join(f"{name:>11}" for name in OUTCOMES)
    lines = [header]
    total = Counter()
    for run, counts in rows.items():
        total.update(counts)
        lines.append(f"{run:<18}{sum(counts.values()):>7}"
                     + "".join(f"{counts[name]:>11}" for name in OUTCOMES))
    lines.append(f"{'all':<18}{sum(total.values()):>7}"
                 + "".join(f"{total[name]:>11}" for name in OUTCOMES))
    return "\n".join(lines)


PROBLEMS = ("ort", "internal", "traceback", "hang", "crash", "modified", "partial")


def failures(results: list[Result], outcomes: tuple[str, ...] = PROBLEMS) -> list[str]:
    return [f"{r.outcome:<9} {r.run:<12} {r.case}: {r.detail}" for r in results
            if r.outcome in outcomes]
