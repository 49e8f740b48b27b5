"""explain-dataset on a Ray cluster: the source cut into windows of rows (Source.windows),
each window read and explained by a Ray Data actor holding one Explainer (one ONNX Runtime
session per program, its threads matched to the actor's CPUs, on its GPU when Ray gives it
one), and the results handed back to the caller, who writes them (run.py, results.py).

The results are written on the driver, not by Ray's write_parquet, because that is what
makes the engines one: the same atomic shards, the same resume rule, and every row exactly
once. A window's results come back whole or not at all: Ray runs the window of a worker
that died again, on a new worker, and hands its output over once."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Container, Iterator
from dataclasses import dataclass

import numpy as np

from .. import errors
from ..explainer import Explainer
from ..graph.model import Model
from ..methods.options import is_count
from .job import Job, explained_batches
from .parts import one_line
from .rows import Explained
from .sources import Source

# Batches one window holds: a worker that dies loses at most this much work.
WINDOW_BATCHES = 2
# CPUs a worker gets when the caller names no worker count (its ONNX Runtime threads).
WORKER_CPUS = 4
_CPU_NAMES = {"cpu", "cpuexecutionprovider"}


def ray_module():
    """ray, with Ray Data, or the one-line error that says how to get it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise errors.InputError("--engine ray needs Ray: pip install 'onnxplain[ray]'") from None
    return ray


class RayCluster:
    """The Ray instance a run explains on, used as a context manager: the one at `address`,
    the one this process is already connected to, or a local one started on entry (and
    stopped on exit). `workers` (None: one per WORKER_CPUS of the cluster, or per GPU share)
    each take the cluster's CPUs shared out evenly and `gpus_per_worker` GPUs. The settings
    are checked when it is made; Ray starts on entry."""

    def __init__(self, address: str | None, workers: int | None, gpus_per_worker: float,
                 providers=None):
        if workers is not None and not is_count(workers):
            raise errors.InputError(f"workers must be a whole number, at least 1, got "
                                    f"{workers!r}")
        if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, int | float) \
                or not 0 <= gpus_per_worker < float("inf") \
                or (gpus_per_worker > 1 and not float(gpus_per_worker).is_integer()):
            raise errors.InputError("gpus_per_worker must be 0, a fraction of one GPU or a "
                                    f"whole number of GPUs, got {gpus_per_worker!r}")
        names = [] if providers in (None, "auto") else [
            str(name).lower() for name in ([providers] if isinstance(providers, str)
                                           else providers)]
        on_cpu = all(name in _CPU_NAMES for name in names)
        if gpus_per_worker and names and on_cpu:
            raise errors.InputError("workers given GPUs run on them, not on the CPU: leave "
                                    "the provider out, or --gpus-per-worker")
        if not gpus_per_worker and not on_cpu:
            raise errors.InputError(f"provider {providers!r} needs a GPU on each Ray worker: "
                                    "give --gpus-per-worker (Ray then assigns them)")
        # A worker without GPUs runs on the CPU whatever its machine has; one with GPUs on
        # the providers asked for, else CUDA.
        self.providers = ("cpu" if not gpus_per_worker
                          else providers if names else "cuda")
        self._ray = ray_module()
        self.address, self.gpus_per_worker = address, gpus_per_worker
        self._asked = workers
        self.workers = self.threads = 0  # known once connected
        self._started = False
        self._saved: tuple | None = None

    def __enter__(self) -> RayCluster:
        ray = self._ray
        if ray.is_initialized():
            if self.address is not None:
                raise errors.InputError("this process is already connected to Ray: leave the "
                                        "address out, or call ray.shutdown() first")
        else:
            self._connect()
        try:
            self._share_out()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self._saved = _quiet(ray)
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            _restore(self._ray, self._saved)
            self._saved = None
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def _connect(self) -> None:
        settings = {"configure_logging": False, "log_to_driver": False}
        try:
            if self.address:
                self._ray.init(address=self.address, **settings)
            else:  # a local instance, with CPUs as Ray counts them unless more are asked for
                here = len(os.sched_getaffinity(0))
                wanted = self._asked if self._asked and self._asked > here else None
                self._ray.init(num_cpus=wanted, include_dashboard=False, **settings)
        except (ConnectionError, ValueError, RuntimeError) as err:
            where = f"at {self.address}" if self.address else "on this machine"
            raise errors.InputError(f"cannot start or reach a Ray cluster {where}: "
                                    f"{one_line(err)[:300]}") from None
        self._started = True

    def _share_out(self) -> None:
        """The workers and their threads: the cluster's CPUs shared out evenly, no worker
        given more than its largest node has (it could never be placed)."""
        ray = self._ray
        resources = ray.cluster_resources()
        cpus, gpus = max(int(resources.get("CPU", 1)), 1), resources.get("GPU", 0)
        node_cpus = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes()
                         if node.get("Alive")), default=cpus)
        workers = self._asked or max(1, cpus // WORKER_CPUS)
        if self._asked is None and self.gpus_per_worker:
            workers = max(1, min(workers, int(gpus // self.gpus_per_worker)))
        if workers > cpus:
            raise errors.InputError(f"{workers} workers need a CPU each; the Ray cluster has "
                                    f"{cpus}")
        if self.gpus_per_worker and self.gpus_per_worker * workers > gpus:
            raise errors.InputError(f"{workers} workers of {self.gpus_per_worker:g} GPU "
                                    f"each need {self.gpus_per_worker * workers:g} GPUs; the "
                                    f"Ray cluster has {gpus:g}")
        self.workers = workers
        self.threads = max(1, min(cpus // workers, max(node_cpus, 1)))

    def explain(self, job: Job, source: Source, done: Container[str]) -> Iterator[Explained]:
        """Every row of `job`'s source but those in `done`, explained by the workers, in the
        order their windows finish."""
        windows = [{"start": w.start, "stop": w.stop}
                   for w in source.windows(WINDOW_BATCHES * job.read_rows)]
        if not windows:
            return
        ray = self._ray
        dataset = ray.data.from_items(windows, override_num_blocks=len(windows))
        dataset = dataset.map_batches(
            ExplainWorker, batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.workers),
            num_cpus=self.threads, num_gpus=self.gpus_per_worker or None,
            fn_constructor_kwargs={"job": job, "rows": source.count(),
                                   "done": frozenset(done), "threads": self.threads,
                                   "providers": self.providers})
        try:
            blocks = dataset.iter_batches(batch_size=None, batch_format="numpy")
            for payload in (item for block in blocks for item in block["payload"]):
                explained = pickle.loads(payload)
                if isinstance(explained, WorkerFailure):
                    raise explained.error()
                yield from explained
        except (errors.OnnxplainError, WorkerError):
            raise
        except Exception as err:  # noqa: BLE001 - Ray's own failure, in any of its types
            raise errors.OnnxplainError(f"the Ray job failed: {one_line(err)[:500]}"
                                        ) from None


class ExplainWorker:
    """A Ray Data actor: one Explainer, built once, explaining the windows it is handed.

    What it meets (a model it cannot load, no GPU where one was given, a refused row set)
    it hands back to the driver rather than raising: Ray Data keeps only the text of what a
    task raises, and the driver raises it with its own type."""

    def __init__(self, job: Job, rows: int, done: frozenset[str], threads: int, providers):
        self.job, self.done = job, done
        self._failure: BaseException | None = None
        try:
            model = Model.load(job.model)
            # Ray shows a GPU worker its own GPUs only (CUDA_VISIBLE_DEVICES): device 0.
            self.explainer = Explainer(model, providers,
                                       memory_budget_mb=job.memory_budget_mb, progress=False,
                                       threads=threads)
            self.source = job.source(model)
            if self.source.count() != rows:  # its windows would be other rows
                raise errors.InputError(
                    f"the data at {job.data} holds {self.source.count()} rows on a Ray "
                    f"worker but {rows} where the run started: every node must see the "
                    "same files")
        except Exception as err:  # noqa: BLE001 - handed back by __call__ (see above)
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
    """What a worker raised: the exception itself where it survives pickling, else its
    type's name and message."""

    pickled: bytes | None
    kind: str
    message: str
    ours: bool

    @classmethod
    def of(cls, err: BaseException) -> WorkerFailure:
        try:
            pickled = pickle.dumps(err)
            pickle.loads(pickled)  # noqa: S301 - our own bytes, just made
        except Exception:  # noqa: BLE001 - exceptions whose arguments do not round-trip
            pickled = None
        return cls(pickled, type(err).__name__, str(err),
                   isinstance(err, errors.OnnxplainError))

    def error(self) -> BaseException:
        """The worker's exception: onnxplain's own errors and OSErrors as they were (an
        InputError stays the user's to fix); any other is a bug, a WorkerError."""
        if self.pickled is not None:
            err = pickle.loads(self.pickled)  # noqa: S301 - from our own workers
            if isinstance(err, errors.OnnxplainError | OSError):
                return err
        if self.ours:
            return errors.OnnxplainError(self.message)
        return WorkerError(f"in a Ray worker: {self.kind}: {one_line(Exception(self.message))}")


def _quiet(ray) -> tuple:
    """Silence Ray Data's per-run INFO lines and bars, which would interleave with our
    progress bar (and its warning that its bars are off); what was set before, for
    _restore."""
    loggers = [logging.getLogger(name) for name in ("ray.data", "ray.data._internal.progress")]
    context = ray.data.DataContext.get_current()
    saved = ([logger.level for logger in loggers], context.enable_progress_bars)
    loggers[0].setLevel(logging.WARNING)
    loggers[1].setLevel(logging.ERROR)
    context.enable_progress_bars = False
    return saved


def _restore(ray, saved: tuple) -> None:
    levels, bars = saved
    for name, level in zip(("ray.data", "ray.data._internal.progress"), levels, strict=True):
        logging.getLogger(name).setLevel(level)
    ray.data.DataContext.get_current().enable_progress_bars = bars
