"""Checking an exported explainer against the in-process method on the same inputs. The
in-process run is the exported program itself (methods._graph), fed what explain() feeds,
so the check tests the serialisation (weights embedded, metadata, inputs with defaults); the
exceptions the README lists (fixed-batch DeepLIFT, SmoothGrad over DeepLIFT, LRP or IG)
compose the same numbers differently and differ in the last bits."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import numpy as np
import onnx

from .errors import InputError
from .explainer import Explainer
from .export.graph import TARGET
from .export.methods import ATTRIBUTION
from .export.noise import SEED as NOISE_SEED
from .export.seed import OUTPUT_SEED, seed_row
from .graph.model import Model
from .methods.smoothgrad import seeds_of
from .runtime.engine import PROGRAM_FUSIONS_OFF
from .runtime.progress import progress_bar
from .runtime.session import Session

SAMPLE_ROWS = 2


def sample_inputs(model: Model, rows: int = SAMPLE_ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform [0, 1) rows of every float input's declared shape; other inputs, or symbolic
    dims after the batch axis, need real samples."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in model.inputs:
        dims = spec.dims
        if not spec.is_float or dims is None or not all(isinstance(d, int) for d in dims[1:]):
            raise InputError(f"cannot make a sample for input {spec.describe()}; pass sample "
                             "inputs with --input")
        arrays[spec.name] = rng.random((rows, *dims[1:])).astype(spec.numpy_dtype)
    return arrays


def check_export(model: Model, exported: onnx.ModelProto, method: str, options: dict,
                 inputs: Mapping[str, np.ndarray], output: str | None = None,
                 providers=None, output_seed=None, progress: bool = False,
                 place: Mapping | None = None) -> dict:
    """Largest absolute and relative (to the largest reference value) difference between
    the exported model's attributions and Explainer.explain's, per input. An explainer
    exported with an `output_seed` (one row) is compared with that seed on every row, one
    exported at a `place` (position, pixel or region) with explain() at that place.
    `progress` shows a bar over the two runs (the second takes about as long as the first,
    so its ETA is a fair one)."""
    explainer = Explainer(model, providers, output=output, progress=False)
    rows = len(next(iter(inputs.values())))
    # The rows per Loop iteration the export baked (not the budget's): the same program.
    baked = json.loads(next((p.value for p in exported.metadata_props
                             if p.key == "onnxplain.options"), "{}"))
    if "internal_batch_size" in baked:
        options = {**options, "internal_batch_size": baked["internal_batch_size"]}
    seeds = None
    if output_seed is not None:
        row = seed_row(explainer.model, explainer.output, output_seed)
        seeds = np.repeat(row, rows, axis=0)
    with progress_bar(progress, 2, "export --check", "run") as bar:
        reference = explainer.explain(dict(inputs), method=method, output_seed=seeds,
                                      **dict(place or {}), **options)
        bar.update(1)

        def noise() -> np.ndarray:  # the per-row seeds explain() drew noise with
            return seeds_of(explainer.engine, dict(inputs), int({**baked, **options}["seed"]))
        got = _run_exported(exported, explainer.providers, inputs, rows, seeds, noise)
        bar.update(1)
    return _differences(reference, got, method, rows)


def _run_exported(exported: onnx.ModelProto, providers, inputs: Mapping[str, np.ndarray],
                  rows: int, seeds: np.ndarray | None,
                  noise: Callable[[], np.ndarray] | None) -> dict[str, np.ndarray]:
    """The exported model's outputs on `inputs`, fed what explain() used: the output seed
    on every row, and where the model reads noise seeds, the noise tunnels' per-row seeds
    that `noise` makes (explain mixes each row's bytes into the seed:
    export.noise.row_seeds)."""
    session = Session(exported, providers, disabled=PROGRAM_FUSIONS_OFF)
    feeds = dict(inputs)
    declared = {i.name for i in exported.graph.input}
    required = declared - {init.name for init in exported.graph.initializer}
    if TARGET in required:
        feeds[TARGET] = np.full(rows, -1, np.int64)
    if OUTPUT_SEED in required and seeds is not None:
        feeds[OUTPUT_SEED] = seeds
    if noise is not None and NOISE_SEED in declared:
        feeds[NOISE_SEED] = noise()
    return session.run(None, feeds)


def _differences(reference, got: Mapping[str, np.ndarray], method: str, rows: int) -> dict:
    per_input = {}
    for name, expected in reference.attributions.items():
        mine = got.get(ATTRIBUTION + name)
        if mine is None:
            continue
        diff = float(np.abs(mine.astype(np.float64) - expected).max())
        scale = float(np.abs(expected).max())
        per_input[name] = {"max_abs_diff": diff, "max_rel_diff": diff / scale if scale else diff}
    if not per_input:
        raise InputError(f"the exported model has no attribution output to compare with "
                         f"{method}'s")
    return {"rows": rows, "inputs": per_input,
            "max_abs_diff": max(v["max_abs_diff"] for v in per_input.values()),
            "max_rel_diff": max(v["max_rel_diff"] for v in per_input.values())}
