"""Load, edit and save a large model with plain `onnx` (onnxplain's walkers), onnxplain's own
loader, onnx-ir and onnx-graphsurgeon: time and peak memory, each run in a fresh process.
The figures behind docs/graph_ir.md.

    python benchmarks/ir_libraries.py [--model decoder|vgg19|PATH] [--repeats 3]
        [--libraries onnx onnxplain onnx_ir onnx_ir_spans graphsurgeon]
        [--storage inline external]
    python benchmarks/ir_libraries.py --zoo [NAME ...]
    python benchmarks/ir_libraries.py --blockers

The edit is the surgery onnxplain does for a layer cut: expose an intermediate tensor (the
middle LayerNormalization's output, else the middle node's) as an output (a tap), make it
the only output, remove the nodes and initializers nothing reads any more (dead-node
removal), and rename that tensor to `tap/<name>` (every reader follows). The tap is
declared float32 of unknown shape in every library (no shape inference: that is a separate
cost). Each saved model is checked under ONNX Runtime: its output equals, bit for bit, the
tensor the original model computes there.

Rows: `onnx` onnx.load + the walkers in onnxplain.autodiff.build + onnx.save; `onnxplain`
Model.load (normalise, checks, file stubs for large weights) + the same edit + standalone
+ onnx.save; `onnx_ir` onnx_ir.load / RemoveUnusedNodesPass / onnx_ir.save (external
tensors stay lazy); `onnx_ir_spans` onnxplain's file stubs turned into onnx-ir
ExternalTensors over the user's protobuf file (step 2 of the plan in docs/graph_ir.md);
`graphsurgeon` onnx.load + import_onnx / cleanup / export_onnx + onnx.save.
`--storage external` converts the model once to a file with external data. Columns: `copy`
the weight-sharing copy a program build starts from; `held` the resident memory above the
baseline right after loading (what an explainer keeps); `peak-base` the peak above it.

--zoo: every model of the zoo cache (or those named) loaded and saved by each library
unchanged, then by each library with dead-node removal and nothing else; the saved model's
outputs under ONNX Runtime on the zoo's sample must equal the original's bit for bit.

Install the candidates (not project dependencies; onnx-ir also comes with onnxscript):
    pip install onnx-ir onnx-graphsurgeon --no-deps
A library that is not installed is skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import machine, peak_rss, rss  # noqa: E402

MB = 1 << 20
LIBRARIES = ("onnx", "onnxplain", "onnx_ir", "onnx_ir_spans", "graphsurgeon")
_MODULES = {"onnx_ir": "onnx_ir", "onnx_ir_spans": "onnx_ir", "graphsurgeon": "onnx_graphsurgeon"}
PACKAGES = {"onnx_ir": "onnx-ir", "onnx_ir_spans": "onnx-ir", "graphsurgeon": "onnx-graphsurgeon"}
TAP_PREFIX = "tap/"


def installed(library: str) -> bool:
    module = _MODULES.get(library)
    return module is None or importlib.util.find_spec(module) is not None


def version(library: str) -> str:
    import importlib.metadata as meta

    package = PACKAGES.get(library, library)
    if package == "onnxruntime" and importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        return onnxruntime.__version__  # onnxruntime-gpu's distribution has another name
    return meta.version(package)


def _read_initializers(graph, nodes) -> list:
    """The initializers of `graph` that `nodes` read (inside their subgraphs too)."""
    from onnxplain.graph.walk import node_inputs

    read = {name for node in nodes for name in node_inputs(node)}
    return [init for init in graph.initializer if init.name in read]


# ---- the edit, once per library --------------------------------------------------------------

def onnx_run(source: str, target: str, tap: str | None, external: bool,
             loader: str = "onnx") -> dict[str, float]:
    """Plain protobuf with onnxplain's walkers (the `onnx` and `onnxplain` rows)."""
    import onnx

    from onnxplain.graph.walk import ancestors, rename_reads

    start = time.perf_counter()
    weights = None
    if loader == "onnxplain":
        from onnxplain.graph.model import Model

        model = Model.load(source)
        proto, weights = model.proto, model.weights
    else:
        proto = onnx.load(source)
    loaded = time.perf_counter()
    held = rss()
    mark = time.perf_counter()  # the copy's time leaves the collection out
    from onnxplain.graph.weights import light_copy

    del light_copy(proto).graph.node[:]  # what each program build starts from
    copied = time.perf_counter()
    if tap is not None:
        graph = proto.graph
        nodes = ancestors(graph.node, [tap])
        kept = _read_initializers(graph, nodes)
        renamed = TAP_PREFIX + tap
        for node in nodes:
            node.output[:] = [renamed if out == tap else out for out in node.output]
        rename_reads(nodes, {tap: renamed})
        del graph.output[:]
        graph.output.append(onnx.helper.make_tensor_value_info(
            renamed, onnx.TensorProto.FLOAT, None))
        del graph.value_info[:]
        survivors = [onnx.NodeProto() for _ in nodes]
        for copy, node in zip(survivors, nodes, strict=True):
            copy.CopyFrom(node)  # protobuf: a repeated field cannot hold nodes it already holds
        del graph.node[:]
        graph.node.extend(survivors)
        used = {init.name for init in kept}
        for index in reversed(range(len(graph.initializer))):
            if graph.initializer[index].name not in used:
                del graph.initializer[index]
    edited = time.perf_counter()
    if weights is not None:
        from onnxplain.graph.weights import standalone

        proto = standalone(proto, weights)
    _save(proto, target, external)
    return {"load": loaded - start, "copy": copied - mark, "edit": edited - copied,
            "save": time.perf_counter() - edited, "held": held}


def onnx_ir_run(source: str, target: str, tap: str | None, external: bool,
                spans: bool = False) -> dict[str, float]:
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    start = time.perf_counter()
    model = spans_model(source) if spans and not external else ir.load(source)
    loaded = time.perf_counter()
    held = rss()
    mark = time.perf_counter()  # the copy's time leaves the collection out
    model.clone()  # shares the tensors
    copied = time.perf_counter()
    if tap is not None:
        value = next(out for node in model.graph for out in node.outputs if out.name == tap)
        if value.type is None:
            value.type = ir.TensorType(ir.DataType.FLOAT)
        model.graph.outputs.clear()
        model.graph.outputs.append(value)
        RemoveUnusedNodesPass()(model)
        value.name = TAP_PREFIX + tap
    edited = time.perf_counter()
    if spans and not external:
        ir.external_data.load_to_model(model)  # the spans point into the source file
    ir.save(model, target, external_data=Path(target).name + ".data" if external else None)
    return {"load": loaded - start, "copy": copied - mark, "edit": edited - copied,
            "save": time.perf_counter() - edited, "held": held}


def spans_model(source: str):
    """Step 2 of docs/graph_ir.md's plan: onnxplain's file stubs (graph.weights: the large
    weights read from the protobuf file by offset, the parse dropped) as onnx-ir
    ExternalTensors over the same spans of the user's file."""
    import onnx_ir as ir

    from onnxplain.graph.load import read_model
    from onnxplain.graph.weights import file_span

    light = read_model(source)[0]
    model = ir.serde.deserialize_model(light)
    for init in list(model.graph.initializers.values()):
        proto = next((t for t in light.graph.initializer if t.name == init.name), None)
        span = None if proto is None else file_span(proto)
        if span is not None:
            init.const_value = ir.ExternalTensor(
                os.path.basename(span.path), span.offset, span.length, init.const_value.dtype,
                shape=init.const_value.shape, name=init.name,
                base_dir=os.path.dirname(span.path))
    return model


def graphsurgeon_run(source: str, target: str, tap: str | None, external: bool
                     ) -> dict[str, float]:
    import onnx
    import onnx_graphsurgeon as gs

    start = time.perf_counter()
    graph = gs.import_onnx(onnx.load(source))
    loaded = time.perf_counter()
    held = rss()
    mark = time.perf_counter()  # the copy's time leaves the collection out
    graph.copy()  # shares the weights
    copied = time.perf_counter()
    if tap is not None:
        value = graph.tensors()[tap]
        if value.dtype is None:
            value.dtype = np.float32
        graph.outputs = [value]
        graph.cleanup()
        value.name = TAP_PREFIX + tap
    edited = time.perf_counter()
    proto = gs.export_onnx(graph)
    _save(proto, target, external)
    return {"load": loaded - start, "copy": copied - mark, "edit": edited - copied,
            "save": time.perf_counter() - edited, "held": held}


def _save(proto, target: str, external: bool) -> None:
    import onnx

    if external:
        onnx.save(proto, target, save_as_external_data=True, location=Path(target).name + ".data",
                  size_threshold=1024)
    else:
        onnx.save(proto, target)


def run_library(library: str, source: str, target: str, tap: str | None, external: bool
                ) -> dict[str, float]:
    if library in ("onnx_ir", "onnx_ir_spans"):
        return onnx_ir_run(source, target, tap, external, spans=library == "onnx_ir_spans")
    if library == "graphsurgeon":
        return graphsurgeon_run(source, target, tap, external)
    return onnx_run(source, target, tap, external, loader=library)


def child(library: str, source: str, target: str, tap: str, external: bool) -> None:
    """One measurement in this (fresh) process: prints a JSON line."""
    import onnx  # noqa: F401 - imported before `base`: the baseline holds them
    import onnxruntime  # noqa: F401

    if library in ("onnx_ir", "onnx_ir_spans"):
        import onnx_ir  # noqa: F401
    elif library == "graphsurgeon":
        import onnx_graphsurgeon  # noqa: F401
    if library != "onnx_ir" and library != "graphsurgeon":
        import onnxplain  # noqa: F401
    base = peak_rss()
    times = run_library(library, source, target, tap, external)
    print(json.dumps({**times, "base": base, "peak": peak_rss()}))


def measure(library: str, source: Path, target: Path, tap: str, external: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", library, str(source), str(target),
                          tap, str(int(external))], capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["(no output)"]
        return {"error": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the large model -------------------------------------------------------------------------

def source_path(name: str, external: bool) -> Path:
    """The model (memory.py's decoder or VGG-19, or a path); with `external`, a copy of it
    whose initializers lie in a data file beside it (made once)."""
    from memory import model_path

    path = model_path(name)
    if not external:
        return path
    copy = path.parent / f"{path.stem}_external" / path.name
    if not copy.exists():
        import onnx

        copy.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(onnx.load(path), copy, save_as_external_data=True,
                  location=path.name + ".data", size_threshold=1024)
    return copy


def pick_tap(path: Path) -> str:
    """The middle LayerNormalization's output, else the middle node's first output."""
    import onnx

    nodes = onnx.load(path, load_external_data=False).graph.node
    norms = [node for node in nodes if node.op_type == "LayerNormalization"]
    node = norms[len(norms) // 2] if norms else nodes[len(nodes) // 2]
    return node.output[0]


def feeds_for(path: Path) -> dict[str, np.ndarray]:
    import onnxruntime as ort
    from memory import _batch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {v.name: _batch(v.shape, 1, "int" in v.type) for v in session.get_inputs()}


def reference_tap(path: Path, tap: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The tapped tensor as the unedited model computes it: its outputs plus the tap."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(path)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(tap, onnx.TensorProto.FLOAT,
                                                                 None))
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run([tap], feeds)[0]


def check_saved(target: Path, tap: str, feeds: dict[str, np.ndarray], expected: np.ndarray
                ) -> str:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        (got,) = session.run([TAP_PREFIX + tap], feeds)
    except Exception as err:  # noqa: BLE001 - reported, not raised: one row of the table
        return f"ORT refuses: {str(err).splitlines()[0][:80]}"
    return "identical" if np.array_equal(got, expected) else "DIFFERS"


def large(args: argparse.Namespace) -> None:
    print(machine())
    libraries = [lib for lib in args.libraries if _say_if_missing(lib)]
    shown = dict.fromkeys(["onnx", "onnxruntime", *libraries])
    print("versions: " + ", ".join(f"{lib} {version(lib)}" for lib in shown))
    for storage in args.storage:
        external = storage == "external"
        source = source_path(args.model, external)
        size = sum(p.stat().st_size for p in source.parent.iterdir()
                   if p.name.startswith(source.stem)) if external else source.stat().st_size
        tap = pick_tap(source)
        feeds = feeds_for(source)
        expected = reference_tap(source, tap, feeds)
        print(f"\n{args.model} ({storage} data, {size / MB:.0f} MB), tap '{tap}'; median of "
              f"{args.repeats} fresh processes (peak: max); RSS in MB")
        print(f"{'library':13s} {'load s':>7} {'copy s':>7} {'edit s':>7} {'save s':>7} "
              f"{'total s':>8} {'base':>6} {'held':>6} {'peak':>6} {'peak-base':>9}  saved model")
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "edited.onnx"
            runs: dict[str, list[dict]] = {lib: [] for lib in libraries}
            verdicts: dict[str, str] = {}
            for _ in range(args.repeats):  # libraries alternate: the machine's noise is shared
                for lib in libraries:
                    runs[lib].append(measure(lib, source, target, tap, external))
                    if lib not in verdicts and "error" not in runs[lib][-1]:
                        verdicts[lib] = check_saved(target, tap, feeds, expected)
                    for leftover in Path(folder).iterdir():
                        leftover.unlink()
            for lib in libraries:
                _print_row(lib, runs[lib], verdicts.get(lib, ""))


def _print_row(lib: str, runs: list[dict], verdict: str) -> None:
    failed = [run["error"] for run in runs if "error" in run]
    runs = [run for run in runs if "error" not in run]
    if not runs:
        print(f"{lib:13s} failed: {failed[0][:110]}")
        return
    if failed:
        verdict += f" ({len(failed)} run(s) failed: {failed[0][:60]})"
    med = {key: statistics.median(run[key] for run in runs)
           for key in ("load", "copy", "edit", "save", "base", "held")}
    peak = max(run["peak"] for run in runs)
    total = statistics.median(run["load"] + run["edit"] + run["save"] for run in runs)
    print(f"{lib:13s} {med['load']:7.2f} {med['copy']:7.3f} {med['edit']:7.2f} {med['save']:7.2f} "
          f"{total:8.2f} "
          f"{med['base'] / MB:6.0f} {(med['held'] - med['base']) / MB:6.0f} {peak / MB:6.0f} "
          f"{(peak - med['base']) / MB:9.0f}  {verdict}",
          flush=True)


def _say_if_missing(library: str) -> bool:
    if installed(library):
        return True
    print(f"{library}: skipped, not installed (pip install {PACKAGES[library]} --no-deps)")
    return False


# ---- the zoo ---------------------------------------------------------------------------------

def zoo_roundtrips(names: list[str]) -> None:
    """Each zoo model through each library, unchanged and with dead-node removal only."""
    import model_zoo

    libraries = [lib for lib in ("onnx", "onnx_ir", "graphsurgeon") if _say_if_missing(lib)]
    cache = Path(os.environ.get("ONNXPLAIN_ZOO_DIR", Path.home() / ".cache/onnxplain/zoo"))
    names = names or sorted(model_zoo.ZOO)
    notes: list[str] = []
    print(f"{'model':24s} " + " ".join(f"{lib + ' ' + mode:>20s}" for lib in libraries
                                       for mode in ("io", "dead")))
    for name in names:
        path = cache / name / "model.onnx"
        if not path.exists():
            print(f"{name:24s} not built (python -m model_zoo build {name})")
            continue
        sample = dict(np.load(path.parent / "sample.npz"))
        cells = [_roundtrip_cell(lib, path, prune, notes, sample) for lib in libraries
                 for prune in (False, True)]
        print(f"{name:24s} " + " ".join(f"{cell:>20s}" for cell in cells), flush=True)
    print("io: loaded and saved; dead: dead nodes and unused initializers removed in between. "
          "*: compared after onnxplain's load_model (ONNX Runtime cannot run the file as is)")
    for note in notes:
        print("  " + note)


def _roundtrip_cell(library: str, path: Path, prune: bool, notes: list[str],
                    sample: dict[str, np.ndarray]) -> str:
    """`identical`: the saved model's outputs equal the original's bit for bit under ONNX
    Runtime; `identical*`: ONNX Runtime cannot run the original as it is (a float16 input
    fed float32 samples is cast; opset 23 ops it lacks), so both went through onnxplain's
    load_model first. With `prune`, the nodes left (main graph + subgraphs) follow."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "model.onnx"
        try:
            _roundtrip(library, str(path), str(target), prune)
        except Exception as err:  # noqa: BLE001 - the cell names the failure
            notes.append(f"{path.parent.name} {library}: {_first_line(err)}")
            return type(err).__name__[:20]
        mark = ""
        try:
            before = _run(path, sample, normalised=False)
        except Exception:  # noqa: BLE001 - retried through onnxplain's loader
            before, mark = _run(path, sample, normalised=True), "*"
        try:
            after = _run(target, sample, normalised=bool(mark))
        except Exception as err:  # noqa: BLE001
            notes.append(f"{path.parent.name} {library}: saved model: {_first_line(err)}")
            return "ORT refuses"
        left = f" {_count_nodes(target)}" if prune else ""
    same = len(before) == len(after) and all(
        a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
        for a, b in zip(before, after, strict=True))
    return ("identical" + mark if same else "DIFFERS") + left


def _count_nodes(path: Path) -> int:
    import onnx

    def count(graph: onnx.GraphProto) -> int:
        inner = [a.g for n in graph.node for a in n.attribute if a.HasField("g")]
        inner += [g for n in graph.node for a in n.attribute for g in a.graphs]
        return len(graph.node) + sum(count(g) for g in inner)

    return count(onnx.load(path).graph)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]


def _run(path: Path, sample: dict[str, np.ndarray], normalised: bool) -> list[np.ndarray]:
    """The model's outputs on `sample` (cast to the declared input types), one thread."""
    import onnxruntime as ort

    from onnxplain.graph.load import load_model

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # failures are reported in the table
    source = load_model(str(path))[0].SerializeToString() if normalised else str(path)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        if value.name in sample:
            kind = value.type.removeprefix("tensor(").removesuffix(")")
            dtype = {"float": "float32", "double": "float64"}.get(kind, kind)
            feeds[value.name] = sample[value.name].astype(dtype, copy=False)
    return session.run(None, feeds)


def _roundtrip(library: str, source: str, target: str, prune: bool) -> None:
    """Load and save; with `prune`, remove dead nodes and unused initializers in between."""
    import onnx

    if library == "onnx_ir":
        import onnx_ir as ir
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        model = ir.load(source)
        if prune:
            RemoveUnusedNodesPass()(model)
        # Without `external_data`, tensors read from a data file keep pointing at its
        # name, now resolved beside the target: name a data file of the target's own.
        outside = any(Path(source).parent.glob(Path(source).name + ".*"))
        ir.save(model, target, external_data=Path(target).name + ".data" if outside else None)
    elif library == "graphsurgeon":
        import onnx_graphsurgeon as gs

        graph = gs.import_onnx(onnx.load(source))
        if prune:
            graph.cleanup()
        onnx.save(gs.export_onnx(graph), target)
    else:
        from onnxplain.graph.walk import ancestors

        proto = onnx.load(source)
        if prune:
            graph = proto.graph
            nodes = ancestors(graph.node, [o.name for o in graph.output])
            keep = {id(node) for node in nodes}
            kept = {init.name for init in _read_initializers(graph, nodes)}
            for index in reversed(range(len(graph.node))):
                if id(graph.node[index]) not in keep:
                    del graph.node[index]
            for index in reversed(range(len(graph.initializer))):
                if graph.initializer[index].name not in kept:
                    del graph.initializer[index]
        onnx.save(proto, target)


FEATURES = """
<ir_version: 10, opset_import: ["" : 21, "local" : 1]>
features (float[N, 4] x) => (float[N, 4] y)
{
  w8f = Cast<to=1>(w8)
  w4f = DequantizeLinear(w4, s)
  a = local.Scale(x, w8f)
  b = Add(a, w4f)
  m = ReduceSum<keepdims=0>(b)
  c = Greater(m, zero)
  dead = Neg(b)
  y = If(c) <then_branch = g1 () => (float[N, 4] t) { t = Mul(b, w4f) unused = Neg(t) },
             else_branch = g2 () => (float[N, 4] e) { e = Sub(b, w8f) }>
}
<domain: "local", opset_import: ["" : 21]>
Scale (x, w) => (y) { y = Mul(x, w) }
"""


def blocker_models(folder: Path) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    """Models holding what onnxplain meets and the zoo lacks: a model-local function,
    float8 and int4 weights, an If branch reading outer tensors, dead nodes in the main graph
    and in a branch (opset 21); and onnxplain's own exported IG (a Loop whose body reads the
    weights from the outer graph)."""
    import onnx
    import onnx.parser
    from onnx import TensorProto, helper

    import model_zoo
    from onnxplain.exporter import export_explainer
    from onnxplain.graph.model import Model

    model = onnx.parser.parse_model(FEATURES)
    model.graph.initializer.extend([
        helper.make_tensor("w8", TensorProto.FLOAT8E4M3FN, [4], [0.5, 1.0, 2.0, -1.5]),
        helper.make_tensor("w4", TensorProto.INT4, [4], [1, -2, 3, 7]),
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.25]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    found = {"features_opset21": (model, {"x": x})}
    for name in ("digits_cnn", "cond_cnn"):
        path = model_zoo.model_path(name)
        exported = export_explainer(Model.load(path), "integrated_gradients")
        found[f"{name}_ig_export"] = (exported, dict(model_zoo.sample(name)))
    paths = {}
    for name, (proto, feeds) in found.items():
        (folder / name).mkdir()
        onnx.save(proto, folder / name / "model.onnx")
        paths[name] = (folder / name / "model.onnx", feeds)
    return paths


def blockers() -> None:
    libraries = [lib for lib in ("onnx", "onnx_ir", "graphsurgeon") if _say_if_missing(lib)]
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        models = blocker_models(Path(folder))
        print(f"{'model':24s} {'nodes':>6s} " + " ".join(
            f"{lib + ' ' + mode:>20s}" for lib in libraries for mode in ("io", "dead")))
        for name, (path, feeds) in models.items():
            cells = [_roundtrip_cell(lib, path, prune, notes, feeds) for lib in libraries
                     for prune in (False, True)]
            print(f"{name:24s} {_count_nodes(path):6d} " + " ".join(
                f"{cell:>20s}" for cell in cells), flush=True)
    print("nodes: main graph and subgraphs; after `dead`, the nodes left")
    for note in notes:
        print("  " + note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="decoder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--storage", nargs="+", default=["inline", "external"],
                        choices=["inline", "external"])
    parser.add_argument("--zoo", nargs="*", metavar="NAME",
                        help="round-trip the zoo models (all when none is named)")
    parser.add_argument("--blockers", action="store_true",
                        help="round-trip models with functions, float8/int4, If and Loop")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        library, source, target, tap, external = args.child
        child(library, source, target, tap, external == "1")
    elif args.blockers:
        blockers()
    elif args.zoo is not None:
        zoo_roundtrips(args.zoo)
    else:
        large(args)


if __name__ == "__main__":
    main()
