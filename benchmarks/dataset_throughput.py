"""explain-dataset's engines against Explainer.explain on the same rows held in memory (issue
20's targets: local rows/s >= 0.9 x the in-memory rate at its best batch; Ray with 2 actors
>= 0.8 x local; peak memory flat in the dataset's size).

    python benchmarks/dataset_throughput.py [--images 2000] [--model resnet18]
        [--batches 8 16 32] [--method saliency] [--provider cpu]
    python benchmarks/dataset_throughput.py --rows 2000 20000 --images-dir DIR [--out-dir DIR]
    python benchmarks/dataset_throughput.py --engines local ray:1 ray:2 [--provider cuda]
        [--gpus-per-worker 1]      (ray:N:G: N actors of G GPUs each)

The images are random RGB JPEGs at the model's input size in ten class folders, generated
once per --images-dir (image i is the same in every run and every count; without
--images-dir, in a temporary folder). The first form times, in this one process:
  dataset   onnxplain.explain_dataset over the folder (--dataset-batch rows per batch):
            decoding, batching, explaining and writing the Parquet shards, its Explainer's
            session build included
  memory    Explainer.explain over the decoded images already stacked in memory, one call
            per batch size of --batches (the best one is the baseline)
and prints rows/s for each, their ratio, and the peak resident memory of the process after
each phase. With --rows or --engines, each (rows, engine) pair runs alone in a fresh
subprocess instead, so that each peak RSS (the kernel's VmHWM, read by the process itself)
is that run's alone: rows/s by the run's own clock (summary.json's seconds: for Ray, once its
instance has started), the subprocess's wall time around the call (Ray's start
included), the driver's peak, and for Ray each actor's peak and the sum of its other
processes' peaks. Results are kept as --store says (full: about 0.6 MB a row at 224x224,
12 GB for 20,000 rows; map: a third of it) under --out-dir, and deleted after each run.
The CPU model and its vector extensions are printed beside the figures: ratios move with
them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import machine, peak_rss, peak_rss_of  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.errors import InputError  # noqa: E402
from onnxplain.images import default_preprocessing, load_images  # noqa: E402

CLASSES = 10


def image_folder(root: Path, count: int, size: tuple[int, int]) -> Path:
    """A folder of the first `count` images of one deterministic set (image i is seeded by i,
    so it is the same whatever the count), in CLASSES class folders. The images are written
    once under root/HxW/pool and linked into root/HxW/first-COUNT: a 2,000-row and a
    20,000-row run read the same files, and a rerun writes nothing."""
    base = root / f"{size[0]}x{size[1]}"
    folder = base / f"first-{count}"
    done = base / f"first-{count}.done"  # beside the folder: a marker inside would be data
    if done.exists():
        return folder
    staging = base / f".first-{count}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    for index in range(count):
        name = Path(f"class{index % CLASSES}", f"{index:06d}.jpg")
        pooled = base / "pool" / name
        if not pooled.exists():
            pixels = np.random.default_rng(index).integers(0, 256, (*size, 3), dtype=np.uint8)
            pooled.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(pooled.with_suffix(".part"), "JPEG", quality=90)
            pooled.with_suffix(".part").rename(pooled)  # an interrupted write is never an image
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(pooled, staging / name)
        except OSError:  # a file system without hard links
            shutil.copyfile(pooled, staging / name)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    done.touch()
    return folder


# --- Engines -------------------------------------------------------------------------------
# Where the local engine and the Ray engine (explain_dataset(..., engine="ray", workers=N,
# gpus_per_worker=G)) are called. Until the Ray engine exists, explain_dataset reads those
# keywords as method options and refuses them (InputError), or a later signature may raise
# TypeError: either is reported as "ray engine not available".

def run_engine(engine: str, model: Path, data: Path, out: Path, method: str, batch: int,
               provider: str, workers: int | None = None,
               gpus_per_worker: float | None = None, store: str = "full") -> dict:
    """One explain_dataset run with `engine` ('local' or 'ray'); its summary."""
    keywords = {} if store == "full" else {"store": store}
    if engine != "local":
        keywords |= {"engine": engine, "workers": workers}
        if gpus_per_worker:
            keywords["gpus_per_worker"] = gpus_per_worker
    return onnxplain.explain_dataset(model, data, out, method, batch_size=batch,
                                     providers=provider, progress=False, **keywords)


def engine_available(engine: str, model: Path, data: Path, method: str) -> str | None:
    """None where `engine` runs here, else why not (one line)."""
    if engine == "local":
        return None
    with tempfile.TemporaryDirectory() as work:
        empty = Path(work) / "empty"
        empty.mkdir()
        try:  # an empty folder: refused after the keywords are read, before any work
            run_engine(engine, model, empty, Path(work) / "out", method, 1, "cpu", 1)
        except TypeError as err:
            return f"{engine} engine not available ({err})"
        except InputError as err:
            if "no image" in str(err):
                return None
            return f"{engine} engine not available ({err})"
    return None


class ProcessPeaks:
    """Peak resident memory of each process started under this one (a local Ray instance:
    its actors, its idle workers, raylet, the GCS, the dashboard), read from each one's
    VmHWM every `every` seconds while the run lasts: the kernel keeps the peak, so sampling
    only has to catch each process alive. `peaks`: (title, bytes) per process."""

    def __init__(self, every: float = 0.25):
        import ray  # noqa: F401, I001 - first: it puts the psutil it bundles on sys.path
        import psutil

        self._me = psutil.Process()
        self._seen: dict[int, tuple[str, int]] = {}
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def peaks(self) -> list[tuple[str, int]]:
        return sorted(self._seen.values())

    def __enter__(self) -> ProcessPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(self._every):
            for process in self._me.children(recursive=True):
                try:
                    command = process.cmdline()
                    title = command[0] if command and command[0].startswith("ray::") \
                        else process.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                peak = peak_rss_of(process.pid)
                old_title, old_peak = self._seen.get(process.pid, (title, 0))
                if title == "ray::IDLE":  # an actor's title replaces it while it lives
                    title = old_title
                self._seen[process.pid] = (title, max(peak, old_peak))


def ray_memory(peaks: list[tuple[str, int]]) -> str:
    """The actors' peaks one by one, Ray's other processes summed (an upper bound of what
    they held at once)."""
    actors = sorted((peak for title, peak in peaks if _is_actor(title)), reverse=True)
    others = [peak for title, peak in peaks if not _is_actor(title)]
    return (f"actors {', '.join(f'{peak / 2**20:.0f}' for peak in actors) or 'none'} MB; "
            f"Ray's {len(others)} other processes {sum(others) / 2**20:.0f} MB")


def _is_actor(title: str) -> bool:
    # Ray Data names a map_batches actor ray::MapWorker(MapBatches(<the class>)).
    return title.startswith("ray::") and "Worker" in title


def child(spec: dict) -> None:
    """The body of one measured subprocess: run the engine, print one JSON line."""
    engine = spec["engine"]
    reason = engine_available(engine, Path(spec["model"]), Path(spec["data"]), spec["method"])
    if reason:
        print(json.dumps({"unavailable": reason}))
        return
    start = time.perf_counter()
    with ProcessPeaks() if engine == "ray" else nullcontext() as peaks:
        summary = run_engine(engine, Path(spec["model"]), Path(spec["data"]), Path(spec["out"]),
                             spec["method"], spec["batch"], spec["provider"], spec["workers"],
                             spec["gpus_per_worker"], spec["store"])
    print(json.dumps({"explained": summary["explained"], "errors": summary["errors"],
                      "seconds": summary["seconds"], "wall": time.perf_counter() - start,
                      "peak_rss": peak_rss(),
                      "processes": peaks.peaks if peaks else []}))


def measured(spec: dict) -> dict:
    """`child(spec)` in a fresh interpreter: its memory is its own."""
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the {spec['engine']} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def engine_table(args, model: Path, size: tuple[int, int], root: Path, work: Path) -> None:
    """Each (rows, engine) pair alone in a subprocess: rows/s and peak memory per process."""
    print(f"{'engine':>8} {'rows':>7} {'rows/s':>8} {'wall s':>8} {'driver MB':>10}  "
          "Ray's processes (peak RSS)")
    rates = {}
    row_bytes = 3 * 4 * size[0] * size[1]  # one float32 RGB map
    for rows in args.rows or [args.images]:
        folder = image_folder(root, rows, size)
        for name in args.engines:
            result = engine_run(args, name, model, folder, work / f"out-{rows}",
                                rows * row_bytes)
            if "unavailable" in result:
                print(f"{name:>8} {rows:7d}  {result['unavailable']}")
                continue
            rate = rates[name, rows] = result["explained"] / result["seconds"]
            memory = ray_memory(result["processes"]) if name.startswith("ray") else ""
            print(f"{name:>8} {rows:7d} {rate:8.1f} {result['wall']:8.1f} "
                  f"{result['peak_rss'] / 2**20:10.0f}  {memory}"
                  + (f"  ({result['errors']} errors)" if result["errors"] else ""))
    for (name, rows), rate in rates.items():
        if name != "local" and ("local", rows) in rates:
            print(f"{name} / local at {rows} rows: {rate / rates['local', rows]:.2f} "
                  "(target >= 0.8 with 2 actors)")


def engine_run(args, name: str, model: Path, folder: Path, out: Path, result_bytes: int
               ) -> dict:
    """One engine ('local', 'ray:N' or 'ray:N:G') over `folder`, in a subprocess; its
    results, `result_bytes` of them, deleted afterwards."""
    engine, workers, gpus = (name.split(":") + ["", ""])[:3]
    result_bytes //= {"full": 1, "map": 3}.get(args.store, result_bytes)  # topk: ~nothing
    free = shutil.disk_usage(out.parent).free
    if free < 1.05 * result_bytes:  # float32 maps barely compress
        sys.exit(f"{out.parent} has {free / 2**30:.1f} GB free; the results need about "
                 f"{result_bytes / 2**30:.1f} GB (give --out-dir)")
    try:
        return measured({
            "engine": engine, "workers": int(workers) if workers else None,
            "gpus_per_worker": float(gpus) if gpus else args.gpus_per_worker,
            "model": str(model), "data": str(folder), "out": str(out), "method": args.method,
            "batch": args.dataset_batch, "provider": args.provider, "store": args.store})
    finally:
        shutil.rmtree(out, ignore_errors=True)


def against_memory(args, model: Path, spec, root: Path, work: Path) -> None:
    """explain_dataset and Explainer.explain over the same rows, in this process."""
    explainer = onnxplain.Explainer(model, providers=args.provider, progress=False)
    folder = image_folder(root, args.images, tuple(spec.dims[2:]))
    start_rss = peak_rss()
    # The dataset run first: its peak memory is measured before the images are held.
    summary = run_engine("local", model, folder, work / "out", args.method,
                         args.dataset_batch, args.provider, store=args.store)
    dataset_rss = peak_rss()
    rate = summary["explained"] / summary["seconds"]
    x = load_images([str(p) for p in sorted(folder.rglob("*.jpg"))],
                    default_preprocessing(spec))
    rates = {}
    for batch in args.batches:
        explainer.explain(x[:batch], method=args.method, batch_size=batch)  # warm-up
        start = time.perf_counter()
        explainer.explain(x, method=args.method, batch_size=batch)
        rates[batch] = len(x) / (time.perf_counter() - start)
        print(f"memory   batch {batch:3d}: {rates[batch]:8.1f} rows/s")
    best = max(rates, key=rates.get)
    print(f"dataset  batch {args.dataset_batch:3d}: {rate:8.1f} rows/s "
          f"({summary['explained']} rows, {summary['errors']} errors, its session build "
          "included)")
    print(f"dataset / memory at its best batch ({best}): {rate / rates[best]:.2f} "
          "(target >= 0.9)")
    print(f"peak RSS: {start_rss / 2**20:.0f} MB before, {dataset_rss / 2**20:.0f} MB after "
          f"the dataset run, {peak_rss() / 2**20:.0f} MB with the {len(x)} decoded images "
          "and their attributions in memory")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="resnet18", help="a zoo name or an .onnx file")
    parser.add_argument("--method", default="saliency")
    parser.add_argument("--provider", default="cpu", help="cpu or cuda, for every engine")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--dataset-batch", type=int, default=32)
    parser.add_argument("--images-dir", type=Path,
                        help="where the images are generated once and reused (default: a "
                             "temporary folder)")
    parser.add_argument("--out-dir", type=Path,
                        help="where the results are written, then deleted (default: a "
                             "temporary folder)")
    parser.add_argument("--rows", type=int, nargs="+",
                        help="dataset sizes, each run alone (peak memory against size)")
    parser.add_argument("--engines", nargs="+",
                        help="local, or ray:N[:G] (N actors of G GPUs each), each run alone "
                             "(default with --rows: local)")
    parser.add_argument("--gpus-per-worker", type=float, help="G where ray:N names none")
    parser.add_argument("--store", default="full", help="full, map or topk=K (--store)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    if args.child:
        child(json.loads(args.child))
        return
    model = Path(args.model) if args.model.endswith(".onnx") else model_zoo.model_path(
        args.model)
    spec = onnxplain.Explainer(model, providers="cpu", progress=False).model.inputs[0]
    print(machine())
    print(f"onnxplain {onnxplain.__version__}, {args.model}, {args.method}, provider "
          f"{args.provider}")
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out_dir) as work:
        root = args.images_dir or Path(work) / "images"
        if args.rows or args.engines:
            args.engines = args.engines or ["local"]
            engine_table(args, model, tuple(spec.dims[2:]), root, Path(work))
        else:
            against_memory(args, model, spec, root, Path(work))


if __name__ == "__main__":
    main()
