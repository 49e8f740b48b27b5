"""Methods baked into the explainer graph: everything after the user's inputs (copies,
targets, gradients, reductions, resizing) is ONNX, so any ONNX Runtime computes the
attribution with no onnxplain and no Python."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from onnx import TensorProto

from ..autodiff.build import add_gradients, differentiated_region, missing_rules
from ..autodiff.registry import GRADIENT
from ..errors import InputError, UnsupportedOpError
from ..graph.attention import cached_inputs
from ..graph.model import Model
from ..graph.shapes import TensorInfo
from ..graph.sources import find_sources
from ..graph.stem import Stem, affine_stem
from ..rules.attn_lrp import ATTN_LRP
from ..rules.deeplift import deeplift_rules
from ..rules.guided import DECONVNET, GUIDED_BACKPROP
from ..rules.lrp import NEEDS_BOUNDS, LrpParams, lrp_rules
from .baselines import COMPUTED, computed_baseline
from .graph import ExplainerGraph, is_fed
from .loop import Walk, aliases, gradient_loop, per_block, repeated, weighted_blocks

ATTRIBUTION = "attribution/"
Build = Callable[[ExplainerGraph, dict], None]


@dataclass(frozen=True)
class ExportSpec:
    """A method's graph builder. Its options are the method's own declarations
    (methods.MethodSpec.options); `reads` names those the graph reads (None: all of them),
    so a default, a range or a help line is written once. `any_output`: the graph explains
    no score (activation maps), so the model's output may be of any kind (labels too)."""

    name: str
    build: Build
    reads: tuple[str, ...] | None = None
    any_output: bool = False


EXPORTS: dict[str, ExportSpec] = {}


def register_export(name: str, reads: tuple[str, ...] | None = None, any_output: bool = False):
    def register(build: Build) -> Build:
        EXPORTS[name] = ExportSpec(name, build, reads, any_output)
        return build
    return register


def declare_per_input(eg: ExplainerGraph, values: dict[str, str], meaning: str,
                      at: dict[str, str] | None = None) -> None:
    """`values` by input as outputs ATTRIBUTION + input, shaped like the input or like the
    tensor `at` maps it to (where its attribution was taken)."""
    for name, tensor in values.items():
        like = (at or {}).get(name, name)
        where = f"input '{name}'" if like == name else f"'{like}' (input '{name}')"
        eg.declare(tensor, ATTRIBUTION + name, f"{meaning}, shaped like {where}",
                   eg.b.info(like))


def attributed(eg: ExplainerGraph) -> dict[str, str]:
    """Input -> the tensor the gradient methods attribute: the graph's sources where given
    (in-process: token ids at their embedding), else each float input as the nodes see it."""
    if eg.sources is not None:
        return dict(eg.sources)
    return {name: eg.feeds[name] for name in float_inputs(eg)}


@register_export("saliency")
def saliency(eg, options):
    """|d S / d x| (or signed): methods.saliency's graph, in-process and exported."""
    at = attributed(eg)
    grads = eg.gradients(list(at.values()))
    values = {name: grads[tensor] for name, tensor in at.items()}
    if options["abs"]:
        values = {name: eg.b.op("Abs", g) for name, g in values.items()}
    declare_per_input(eg, values, "|d score / d input|" if options["abs"] else
                      "d score / d input", at)


@register_export("input_x_gradient")
def input_x_gradient(eg, options):
    """x * d S / d x: methods.input_x_gradient's graph, in-process and exported."""
    times_input(eg, GRADIENT, "input * d score / d input")


def times_input(eg: ExplainerGraph, rules, meaning: str, active_from: Sequence[str] = ()
                ) -> None:
    """x * g per attributed input, g the gradient under `rules` (`active_from` as
    add_gradients takes it)."""
    at = attributed(eg)
    grads = eg.gradient_passes(list(at.values()), rules, active_from=active_from)[""]
    declare_per_input(eg, {name: eg.b.op("Mul", tensor, grads[tensor])
                           for name, tensor in at.items()}, meaning, at)


def _modified_gradient(rules, meaning: str):
    def build(eg, options):
        at = attributed(eg)
        grads = eg.gradients(list(at.values()), rules)
        declare_per_input(eg, {name: grads[tensor] for name, tensor in at.items()}, meaning,
                          at)
    return build


register_export("guided_backprop")(_modified_gradient(
    GUIDED_BACKPROP, "guided backpropagation (ReLUs pass positive signals where the input "
    "was positive)"))
register_export("deconvnet")(_modified_gradient(
    DECONVNET, "deconvnet signal (ReLUs pass positive signals)"))


PATH_RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
              "gausslegendre")


def path_points(n_steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of the quadrature of the path integral over [0, 1]."""
    if n_steps < 1:
        raise InputError(f"n_steps must be at least 1, got {n_steps}")
    if rule == "riemann_left":
        return np.arange(n_steps) / n_steps, np.full(n_steps, 1 / n_steps)
    if rule == "riemann_right":
        return np.arange(1, n_steps + 1) / n_steps, np.full(n_steps, 1 / n_steps)
    if rule == "riemann_middle":
        return (np.arange(n_steps) + 0.5) / n_steps, np.full(n_steps, 1 / n_steps)
    if rule == "riemann_trapezoid":
        if n_steps < 2:
            raise InputError("the trapezoid rule needs n_steps >= 2")
        weights = np.full(n_steps, 1 / (n_steps - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, n_steps), weights
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return (nodes + 1) / 2, weights / 2
    raise InputError(f"unknown path rule '{rule}' (choose from {', '.join(PATH_RULES)})")


@register_export("integrated_gradients", ("n_steps", "rule", "baseline", "baseline_value",
                                         "blur_sigma", "seed", "internal_batch_size"))
def integrated_gradients(eg, options):
    """IG_i = (x_i - x'_i) sum_s w_s d S_c(x' + a_s (x - x')) / d x_i.

    The path's points run in a Loop, about `internal_batch_size` rows per iteration
    (export.loop), so memory does not grow with n_steps; its first iteration also runs
    [x; x'] (the original outputs and the convergence delta). As in-process, a one-input
    model walks the path at the output of its input's affine stem L and maps the summed
    gradient back through L's adjoint once. The baselines are inputs (baseline_input), the
    explained scores at x and x' outputs (declare_completeness: the convergence warning)."""
    inputs = list(eg.sources) if eg.sources is not None else float_inputs(eg)
    alphas, weights = path_points(int(options["n_steps"]), options["rule"])
    nodes = eg.take_model_nodes()
    baselines = {name: baseline_input(eg, name, options) for name in inputs}
    path = straight_path(eg, inputs, baselines, nodes)
    walk = path_walk(eg, path.body, alphas, weights, path.clean, path.starts,
                     path.differences)
    sums = gradient_loop(eg, walk, int(options["internal_batch_size"]))
    values = path_values(eg, path, dict(zip(path.starts, sums, strict=True)))
    declare_per_input(eg, values, "integrated gradients")
    declare_completeness(eg, values)


def path_walk(eg: ExplainerGraph, body, alphas: np.ndarray, weights: np.ndarray,
               clean: dict[str, str], starts: dict[str, str], differences: dict[str, str]
               ) -> Walk:
    """`body` at start + a_s difference for each input in `starts` (its other inputs
    repeated), summing w_s times the gradients there."""
    names = list(starts)
    others = aliases(eg, [spec.name for spec in body.inputs if spec.name not in starts])

    def feeds(bb, chunk) -> dict[str, str]:
        path = _gathered(bb, alphas, chunk, starts[names[0]])
        made = {name: repeated(bb, chunk, alias) for name, alias in others.items()}
        for name in names:
            start = starts[name]
            points = bb.op("Add", bb.unsqueeze(start, [0]),
                           bb.op("Mul", per_block(bb, path, start),
                                 bb.unsqueeze(differences[name], [0])))
            made[name] = bb.reshape(points, bb.concat([bb.ints([-1]), bb.dims(start, 1)], 0))
        return made

    def contributions(bb, chunk, grads) -> list[str]:
        weight = _gathered(bb, weights, chunk, starts[names[0]])
        return [weighted_blocks(bb, chunk, grads[name], weight, starts[name])
                for name in names]

    return Walk(body, len(alphas), clean, 2, names, feeds, contributions,
                [starts[name] for name in names])


def _gathered(bb, table: np.ndarray, chunk, like: str) -> str:
    """table[chunk.index] in `like`'s type, [k]."""
    return bb.op("Gather", bb.const(table.astype(bb.np_dtype(like))), chunk.index, axis=0)


@dataclass(frozen=True)
class StraightPath:
    """The straight path from the baselines to the inputs as a Loop walks it (path_walk):
    in `body`, the model or, for a one-input model, the part after its input's affine
    `stem` (the path then runs at the stem's frontier, graph.stem), from `starts` to the
    `ends` per walked tensor; `clean`: the Loop's clean rows per body input, [x; x'] or
    x alone (`clean_blocks` 2 or 1)."""

    body: Model
    clean: dict[str, str]
    clean_blocks: int
    starts: dict[str, str]
    ends: dict[str, str]
    differences: dict[str, str]  # ends - starts
    stem: Stem | None
    baselines: dict[str, str]  # per attributed input


def straight_path(eg: ExplainerGraph, inputs: list[str], baselines: dict[str, str],
                  nodes, both_ends: bool = True, keep: str | None = None) -> StraightPath:
    """The path from `baselines` to `inputs`, given the model's `nodes` (taken out of the
    outer graph, whose stem nodes come back there). `both_ends`: the clean rows hold x'
    too (the scores at both ends); `keep`: a tensor the body must hold (not the stem's
    input or one the stem computes)."""
    b = eg.b
    for name, baseline in baselines.items():
        b.infos[baseline] = b.info(name)
    single = len(eg.model.inputs) == 1 and not eg.model.rows_coupled
    stem = affine_stem(eg.model, inputs[0]) if single else None
    if stem is not None and (stem.frontier in {spec.name for spec in eg.model.outputs}
                             or keep in {stem.input, *stem.region}):
        stem = None  # an affine model (nothing left for the Loop to run), or `keep` in it
    if stem is None:
        clean = {spec.name: b.concat([spec.name, baselines.get(spec.name, spec.name)], 0)
                 if both_ends else spec.name for spec in eg.model.inputs}
        starts, ends = baselines, {name: name for name in inputs}
    else:
        x = stem.input
        both = b.concat([x, baselines[x]], 0)
        shape = b.info(x).shape
        b.infos[both] = TensorInfo(b.dtype(x), None if shape is None else (None, *shape[1:]))
        eg.put_back_stem(stem, nodes, both)
        ends, starts = ({stem.frontier: eg.block(stem.frontier, i)} for i in (0, 1))
        for block in (ends, starts):
            b.infos[block[stem.frontier]] = b.info(stem.frontier)
        clean = {stem.frontier: stem.frontier if both_ends else ends[stem.frontier]}
    differences = {name: b.op("Sub", ends[name], starts[name]) for name in ends}
    return StraightPath(eg.model if stem is None else stem.suffix, clean,
                        2 if both_ends else 1, starts, ends, differences, stem, baselines)


def path_values(eg: ExplainerGraph, path: StraightPath, sums: dict[str, str]
                ) -> dict[str, str]:
    """Per attributed input, (x - x') times the path's weighted sum of gradients (`sums`
    per walked tensor), through the stem's adjoint where the path ran at its frontier."""
    if path.stem is None:
        return {name: eg.b.op("Mul", path.differences[name], sums[name]) for name in path.ends}
    x = path.stem.input
    return {x: _through_stem(eg, path.stem, sums[path.stem.frontier], path.baselines[x])}


def _through_stem(eg: ExplainerGraph, stem, summed: str, baseline: str) -> str:
    """(x - x') L^T summed: the stem's adjoint, seeded on x's block of [x; x']."""
    b = eg.b
    both = eg.feeds[stem.input]
    seed = b.concat([summed, b.zeros_like(summed)], 0)
    adjoint = add_gradients(b, {stem.frontier: seed}, [both], GRADIENT)[both]
    return b.op("Mul", b.op("Sub", stem.input, baseline), eg.block(adjoint, 0))


def declare_delta(eg: ExplainerGraph, values: dict[str, str], change: str) -> None:
    """sum of the attributions - change of the score, per row: completeness's gap."""
    b = eg.b
    total = b.add_all([b.reduce("ReduceSum", v, list(range(1, b.rank(name))), False)
                       for name, v in values.items()])
    delta = b.op("Sub", b.op("Cast", total, to=b.dtype(change)), change)
    eg.declare(delta, "convergence_delta", "float [N]: sum of the attributions minus the "
               "change of the target score from the baseline (0 when complete)",
               TensorInfo(b.dtype(change), ("N",)))


BASELINE = "baseline/"
SCORE, BASELINE_SCORE = "score", "baseline_score"


def declare_completeness(eg: ExplainerGraph, values: dict[str, str]) -> None:
    """The explained score per row at the input (block 0) and at the baseline (block 1),
    and completeness's gap between the attributions' sum and their difference."""
    b, scores = eg.b, eg.batched(eg.output)
    ends = []
    for name, index, where in ((SCORE, 0, "input"), (BASELINE_SCORE, 1, "baseline")):
        ends.append(explained_score(eg, eg.block(scores, index)))
        eg.declare(ends[-1], name, f"float [N]: the explained score at the {where}",
                   TensorInfo(b.dtype(eg.output), ("N",)))
    declare_delta(eg, values, b.op("Sub", *ends))


def baseline_input(eg: ExplainerGraph, name: str, options: dict) -> str:
    """Input `name`'s baseline, read from the explainer input BASELINE + name ([1 or N, ...],
    expanded to the input's shape): a new baseline is a new feed, not a new program. Its
    default is the exported baseline (one row, or [1, ..., 1] for a constant); with
    options["baseline"] FED it has none (in-process runs feed every row's). A blurred or
    uniform baseline is computed from the input instead (export.baselines), no input."""
    b = eg.b
    if isinstance(options["baseline"], str) and options["baseline"] in COMPUTED:
        return computed_baseline(b, name, options["baseline"], options["blur_sigma"],
                                 options["seed"], name)
    default = None if is_fed(options["baseline"]) else _baseline_row(b, name, options)
    key = eg.add_input(BASELINE + name, b.dtype(name),
                       ["baseline_rows", *[None] * (b.rank(name) - 1)], default,
                       f"the baseline of input '{name}' (one row for all rows, or one per row)")
    return b.op("Expand", key, b.shape(name))


def _baseline_row(b, name: str, options: dict) -> np.ndarray:
    """The exported baseline as one row [1, ...] (a constant as [1, ..., 1])."""
    baseline, dtype, rank = options["baseline"], b.np_dtype(name), b.rank(name)
    if isinstance(baseline, np.ndarray):
        array = baseline.astype(dtype)
        if array.ndim == rank - 1:
            array = array[None]
        if array.ndim != rank or array.shape[0] != 1:
            raise InputError(f"an exported baseline must be shaped like one row of "
                             f"'{name}' (got {baseline.shape})")
        return np.ascontiguousarray(array)
    if isinstance(baseline, float) or baseline in ("zeros", "constant"):
        value = (baseline if isinstance(baseline, float) else
                 0.0 if baseline == "zeros" else float(options["baseline_value"]))
        return np.full((1,) * rank, value, dtype)
    what = f"baseline '{baseline}'" if isinstance(baseline, str) else "a baseline dict"
    raise InputError(f"{what} cannot be exported; use zeros, constant (with baseline_value), "
                     "blur, uniform, a number or an array shaped like one row")


@register_export("deeplift", ("baseline", "baseline_value", "blur_sigma", "seed", "eps"))
def deeplift(eg, options):
    """C_i = (x_i - x'_i) m_i with DeepLIFT's Rescale multipliers: the model runs on
    [x; x'] and the rules read the reference half (onnxplain.rules.deeplift). x' is the
    input `baseline/<input>` (baseline_input), so in-process runs feed any reference to the
    same program; extra outputs: the gap and the scores at x and x' (declare_completeness)."""
    b, inputs = eg.b, float_inputs(eg)
    rules, starts = deeplift_rules(float(options["eps"])), {}
    # Ops without a rule are named before the copies' computed Slices (opset 10) are emitted.
    region, active = differentiated_region(b, inputs, [eg.output])
    missing = missing_rules(b, region, rules, active)
    if missing:
        raise UnsupportedOpError(missing)

    def reference(b, name: str) -> str:
        starts[name] = baseline_input(eg, name, options)
        return starts[name]

    eg.run_on_copies(1, {name: reference for name in inputs}, clean_first=True)
    grads = eg.gradients([eg.feeds[name] for name in inputs], rules)
    values = {name: b.op("Mul", b.op("Sub", name, starts[name]),
                         eg.block(grads[eg.feeds[name]], 0)) for name in inputs}
    declare_per_input(eg, values, "DeepLIFT contributions (Rescale rule)")
    declare_completeness(eg, values)


def explained_score(eg: ExplainerGraph, scores: str) -> str:
    """S_c per row [N] of N rows of the explained output: their dot product with the row
    weights (the one-hot of the class, the output seed or the dense objective)."""
    b = eg.b
    product = b.op("Mul", scores, eg.row_weights(b, eg.output))
    rank = b.info(eg.output).rank or 2
    return product if rank == 1 else b.reduce("ReduceSum", product, list(range(1, rank)),
                                              False)


@register_export("lrp", ("composite", "epsilon", "gamma", "alpha", "beta", "low", "high",
                        "stabilizer", "merge_batch_norm"))
def lrp(eg, options):
    """Relevance of each input value under the `composite`'s rules, from R = y_c; extra
    output `output_relevance`, the relevance given (y_c per row: conservation's base)."""
    at, composite = attributed(eg), str(options["composite"])
    params = LrpParams(float(options["epsilon"]), float(options["gamma"]),
                       float(options["alpha"]), float(options["beta"]), None, None,
                       float(options["stabilizer"]))
    if composite in NEEDS_BOUNDS:  # the box rule reads its bounds from program inputs
        bounds = {name: options[name] for name in ("low", "high")}
        rank = options.get("bound_rank")  # in-process: the rank of the fed bounds
        if not any(is_fed(v) for v in bounds.values()):
            replace(params, **{k: box_bound(v) for k, v in bounds.items()}).check(composite)
            bounds = dict(zip(bounds, np.broadcast_arrays(*map(box_bound, bounds.values())),
                              strict=True))  # one rank, as fed in-process
            rank = bounds["low"].ndim
        params = replace(params, **{name: bound_input(eg, name, value, int(rank))
                                    for name, value in bounds.items()})
    rules = lrp_rules(eg.model, list(at.values()), composite, params,
                      bool(options["merge_batch_norm"]))
    grads = eg.gradients(list(at.values()), rules, times_output=True)
    declare_per_input(eg, {name: grads[tensor] for name, tensor in at.items()},
                      f"LRP relevance ({options['composite']})", at)
    declare_output_relevance(eg)


@register_export("attn_lrp")
def attn_lrp(eg, options):
    """x * g with AttnLRP's modified gradient g (rules.attn_lrp: the relevance in LXT's
    Gradient x Input form); extra output `output_relevance`, as lrp's."""
    # Whether a product has two active operands must not depend on what is attributed.
    everything = {*attributed(eg).values(), *(s.tensor for s in find_sources(eg.model)[0])}
    times_input(eg, ATTN_LRP, "AttnLRP relevance", tuple(sorted(everything)))
    declare_output_relevance(eg)


def declare_output_relevance(eg: ExplainerGraph) -> None:
    """Output `output_relevance`: the explained score per row, the relevance an LRP starts
    from (conservation is the attributions' sum over it)."""
    given = explained_score(eg, eg.output)
    eg.declare(given, "output_relevance", "float [N]: the relevance given at the output "
               "(the explained score); conservation is the attributions' sum over it",
               TensorInfo(eg.b.dtype(given), ("N",)))


BOUND = "lrp/"


def bound_input(eg: ExplainerGraph, name: str, value, rank: int) -> str:
    """Input BOUND + name (`low` or `high`), double [rows, *bound]: row 0 is the bound
    (rules.lrp_layers.box_rule), so a new bound is a new feed, not a new program. Its
    default is the exported bound (LrpParams.check'ed); FED: none (in-process runs feed it
    one row per row). The same declared shape in-process and exported (ONNX Runtime's
    kernels follow it)."""
    return eg.add_input(BOUND + name, TensorProto.DOUBLE, ("bound_rows", *[None] * rank),
                        None if is_fed(value) else np.array(value)[None],
                        f"the box rule's {name} bound (row 0 is read), broadcasting against "
                        "the first layer's input")


def box_bound(value) -> np.ndarray | None:
    """A box bound (lrp's low or high) from the API (number or array) or the CLI (text)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return np.asarray(float(value))
        except ValueError:
            raise InputError(f"low and high must be numbers, got '{value}'") from None
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise InputError(f"low and high must be numbers or numeric arrays, got {array.dtype}")
    return array.astype(np.float64)


def resize_like_torch(b, x: str, sizes: str, mode: str) -> str:
    """As torch's interpolate: bilinear without corner alignment, or floor-nearest."""
    attrs = ({"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
             if mode == "bilinear" else
             {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
              "nearest_mode": "floor"})
    if b.opset >= 13:
        return b.op("Resize", x, "", "", sizes, **attrs)
    empty = b.const(np.zeros(0, np.float32), "empty")
    return b.op("Resize", x, empty, empty, sizes, **attrs)


def float_inputs(eg: ExplainerGraph) -> list[str]:
    """Float graph inputs: what the exported gradient methods attribute."""
    cached = cached_inputs(eg.model)  # a KV cache is no input to attribute
    found = [spec.name for spec in eg.model.inputs if spec.is_float and spec.name not in cached]
    if not found:
        besides = " besides its KV cache" if cached else ""
        raise InputError(f"the model has no float input{besides}; exported gradient methods "
                         "explain float inputs (token models: layer_integrated_gradients or "
                         "an attention method)")
    return found


def metadata(method: str, options: dict, eg: ExplainerGraph) -> dict[str, str]:
    import json

    from .._version import __version__

    def jsonable(value):
        return value.tolist() if isinstance(value, np.ndarray) else value

    return {"onnxplain.method": method,
            "onnxplain.options": json.dumps({k: jsonable(v) for k, v in options.items()}),
            "onnxplain.version": __version__,
            "onnxplain.explained_output": eg.output,
            "onnxplain.added": json.dumps(eg.added)}
