"""explain-dataset on a Ray cluster: the source split into windows of rows, each window read
and explained by a Ray Data actor holding one Explainer (one ONNX Runtime session per
program, its threads matched to the actor's CPUs, on its GPU when Ray gives it one), and
the results handed back to the caller, who writes them (run.py, results.py).

The results are written on the driver, not by Ray's write_parquet, because that is what
makes the engines one: the same atomic shards, the same resume rule, and every row exactly
once. Ray re-runs the task of a worker that died, on a new worker, and the driver drops
rows it has already been given."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Container, Iterator
from dataclasses import dataclass

import numpy as np

from .. import errors
from ..errors import InputError, OnnxplainError
from ..explainer import Explainer
from ..graph.model import Model
from .job import Job, explained_batches
from .rows import Explained

# Batches one task reads and explains: a worker that dies loses at most this much work.
TASK_BATCHES = 2
# CPUs a worker gets when the caller names no worker count (its ONNX Runtime threads).
WORKER_CPUS = 4


def ray_module():
    """ray, with Ray Data, or the one-line error that says how to get it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'onnxplain[ray]'") from None
    return ray


class RayCluster:
    """The Ray instance a run explains on: the one at `address`, the one this process is
    already connected to, or a local one started here (and stopped when the run ends).
    `workers` (None: one per WORKER_CPUS of the cluster) each take the cluster's CPUs
    shared out evenly and `gpus_per_worker` GPUs."""

    def __init__(self, address: str | None, workers: int | None, gpus_per_worker: float):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise InputError(f"workers must be a whole number, at least 1, got {workers!r}")
        if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, int | float) \
                or not gpus_per_worker >= 0:
            raise InputError(f"gpus_per_worker must be a number, at least 0, got "
                             f"{gpus_per_worker!r}")
        self._ray = ray_module()
        self._started = not self._ray.is_initialized()
        if self._started:
            self._connect(address, workers)
        resources = self._ray.cluster_resources()
        cpus = max(int(resources.get("CPU", 1)), 1)
        self.workers = workers or max(1, cpus // WORKER_CPUS)
        self.threads = max(1, cpus // self.workers)
        self.gpus_per_worker = gpus_per_worker
        if gpus_per_worker and gpus_per_worker * self.workers > resources.get("GPU", 0):
            self.close()
            raise InputError(f"{self.workers} workers of {gpus_per_worker} GPUs need "
                             f"{gpus_per_worker * self.workers:g} GPUs; the Ray cluster has "
                             f"{resources.get('GPU', 0):g}")

    def _connect(self, address: str | None, workers: int | None) -> None:
        settings = {"configure_logging": False, "log_to_driver": False}
        try:
            if address:
                self._ray.init(address=address, **settings)
            else:  # a local instance: as many CPUs as the machine, or as the workers asked
                self._ray.init(num_cpus=max(os.cpu_count() or 1, workers or 1),
                               include_dashboard=False, **settings)
        except (ConnectionError, ValueError, RuntimeError) as err:
            where = f"at {address}" if address else "on this machine"
            raise InputError(f"cannot start or reach a Ray cluster {where}: "
                             f"{' '.join(str(err).split())[:300]}") from None

    def explain(self, job: Job, count: int, done: Container[str], providers
                ) -> Iterator[Explained]:
        """Every row of `job`'s source (`count` of them) but those in `done`, explained by
        the workers, in the order their windows finish; stops the instance it started."""
        try:
            task_rows = TASK_BATCHES * job.read_rows
            windows = [{"start": start, "stop": min(start + task_rows, count)}
                       for start in range(0, count, task_rows)]
            if not windows:
                return
            ray = self._ray
            _quiet(ray)
            dataset = ray.data.from_items(windows, override_num_blocks=len(windows))
            dataset = dataset.map_batches(
                ExplainWorker, batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=self.workers),
                num_cpus=self.threads, num_gpus=self.gpus_per_worker or None,
                fn_constructor_kwargs={"job": job, "done": frozenset(done),
                                       "providers": providers, "threads": self.threads,
                                       "gpu": bool(self.gpus_per_worker)})
            try:
                blocks = dataset.iter_batches(batch_size=None, batch_format="numpy")
                for payload in (item for block in blocks for item in block["payload"]):
                    explained = pickle.loads(payload)
                    if isinstance(explained, WorkerFailure):
                        raise explained.error()
                    yield from explained
            except (OnnxplainError, WorkerError):
                raise
            except Exception as err:  # noqa: BLE001 - Ray's own failure, in any of its types
                raise OnnxplainError(f"the Ray job failed: {_first_line(err)}") from None
        finally:
            self.close()

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


class ExplainWorker:
    """A Ray Data actor: one Explainer, built once, explaining the windows it is handed.

    A failure to start (no GPU where one was given, a model it cannot load) is handed back
    by the first call, not raised by the constructor: Ray restarts actors whose constructor
    fails, without end. And it is handed back, not raised, because Ray Data keeps only the
    text of what a task raises."""

    def __init__(self, job: Job, done: frozenset[str], providers, threads: int, gpu: bool):
        self.job, self.done = job, done
        self._failure: BaseException | None = None
        try:
            model = Model.load(job.model)
            # Ray shows a GPU worker its GPUs only (CUDA_VISIBLE_DEVICES): device 0 is its own.
            chosen = ["cuda"] if gpu else providers
            self.explainer = Explainer(model, chosen, memory_budget_mb=job.memory_budget_mb,
                                       progress=False, threads=threads)
            self.source = job.source(model)
        except BaseException as err:  # noqa: BLE001 - raised by __call__ (see the docstring)
            self._failure = err

    def __call__(self, windows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = []
        for start, stop in zip(windows["start"], windows["stop"], strict=True):
            try:
                if self._failure is not None:
                    raise self._failure
                batches = self.source.batches(self.job.read_rows, skip=self.done,
                                              window=range(int(start), int(stop)))
                explained = list(explained_batches(self.explainer, self.job, batches))
            except Exception as err:  # noqa: BLE001 - handed to the driver, which raises it
                explained = WorkerFailure.of(err)
            payloads.append(pickle.dumps(explained, protocol=pickle.HIGHEST_PROTOCOL))
        return {"payload": np.array(payloads, dtype=object)}


class WorkerError(RuntimeError):
    """A bug met in a Ray worker (not onnxplain's own error): an internal error."""


@dataclass(frozen=True)
class WorkerFailure:
    """What a worker raised, as its type's name and its message (exceptions with their own
    constructor arguments do not all survive pickling)."""

    kind: str
    message: str
    ours: bool

    @classmethod
    def of(cls, err: BaseException) -> WorkerFailure:
        return cls(type(err).__name__, _first_line(err), isinstance(err, OnnxplainError))

    def error(self) -> Exception:
        """Our error of the same type where its constructor takes the message alone (an
        InputError stays the user's to fix), else its base class; others are bugs."""
        if not self.ours:
            return WorkerError(f"in a Ray worker: {self.kind}: {self.message}")
        kind = getattr(errors, self.kind, OnnxplainError)
        if not (isinstance(kind, type) and issubclass(kind, OnnxplainError)) \
                or "__init__" in vars(kind):
            kind = OnnxplainError
        return kind(self.message)


def _quiet(ray) -> None:
    """Ray Data's per-run INFO lines and its bars would interleave with our progress bar
    (and it warns that its bars are off)."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _first_line(err: BaseException) -> str:
    text = str(err).strip().split("\n")[0] or type(err).__name__
    return text[:500]
