"""The plumbing of an explainer model: the original graph run on several copies of each row,
a class target chosen inside the graph, onnxplain's gradient pass, and the original outputs
read from the clean copy.

Layout of the batch the original nodes see when a method evaluates the model at `copies`
points per row (Integrated Gradients' path, for instance): block after block,
[copy_0 (N rows); ...; copy_{S-1}; clean (N rows)], so row s * N + n is copy s of row n.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..autodiff.build import add_gradients
from ..autodiff.commute import pool_after_relu_for
from ..autodiff.program import Pass, Pre, chosen_class, one_hot
from ..autodiff.registry import GRADIENT, RuleSet
from ..autodiff.seed import dense_weights
from ..errors import InputError, ModelError
from ..graph.builder import GraphBuilder
from ..graph.ir import defined, onnx_ir, to_ir, to_proto, values
from ..graph.model import Model
from ..graph.shapes import TensorInfo
from ..graph.stem import Stem
from ..graph.walk import rename_reads
from ..graph.weights import is_stub, light_copy, nested_graphs
from ..objective import (
    CLASS,
    DENSE,
    EVERYWHERE,
    VALUE,
    Place,
    check_place,
    check_place_fits,
    describe_objective,
    output_form,
)
from .seed import OUTPUT_SEED, seed_row

TARGET = "target"
TARGET_USED = "target_used"
ALL_ROWS = "/all_rows"
NO_TARGET = -1
TARGET_INPUTS = ("optional", "required")
# An explainer input (an output seed, a baseline, a box bound) with no baked default: the
# in-process runs feed one row per row (methods._graph's `fed`), so the program is the same
# whatever the values.
FED = "fed"
MODEL_NAMES = "tensor names"  # Model.derived: every tensor name (model_names)
FREED = "freed"  # Model.derived: a freed_model

# Makes the copies of one input: (builder, input tensor) -> the copies stacked block after
# block, [count * N, ...]. Inputs without a maker are repeated.
CopyMaker = Callable[[GraphBuilder, str], str]


class ExplainerGraph:
    """A copy of `model` being turned into an explainer; emit with `b`, then `finish()`."""

    def __init__(self, model: Model, output: str, target_input: str = "optional",
                 output_seed: np.ndarray | str | None = None, place: Place = EVERYWHERE,
                 sources: Mapping[str, str] | None = None, any_output: bool = False):
        """`output_seed`: one row of weights baked in as the default (export.seed), or
        FED for an `output_seed` input without a default (in-process runs feed one row per
        row). `sources`: input -> the tensor its attribution is taken at (in-process:
        token ids at their embedding); None: the float inputs (export.methods.attributed).
        `any_output`: the method explains no score (export.methods.ExportSpec)."""
        form = output_form(model, output) if output in {s.name for s in model.outputs} else ""
        if output_seed is None and form == VALUE:
            output_seed = np.ones(())  # one value per row explains itself (objective)
        # Scores to explain; a method that explains none (any_output) takes labels too.
        self.scores = output_seed is not None or form in (CLASS, *DENSE)
        if not (self.scores or any_output):
            raise InputError(f"output '{output}' is not a [batch, classes] float output nor "
                             "scores per position; an exported explainer needs one, or an "
                             "output seed")
        check_place(form if output_seed is None else "", place, model.output(output).describe())
        check_place_fits(form, place, model.output(output).dims)
        # Sequence outputs and maps: their dense objective, computed in the graph (objective).
        self.dense = form if output_seed is None and form in DENSE else ""
        self.place = place
        # One row of weights on the output, replacing the class target (export.seed).
        self.seed = output_seed if output_seed is None or is_fed(output_seed) else \
            seed_row(model, output, output_seed)
        self.sources = None if sources is None else dict(sources)
        if target_input not in TARGET_INPUTS:
            raise InputError(f"target_input must be one of {', '.join(TARGET_INPUTS)}, got "
                             f"'{target_input}'")
        # Model tensors called like the inputs the explainer adds are renamed in the model
        # itself (rare): the builders read its nodes too (a Loop body runs them).
        model = freed_model(model, (TARGET, TARGET_USED, OUTPUT_SEED))
        self.model, self.output, self.target_input = model, output, target_input
        # Large weights stay the model's (stubs): in-process sessions read them from there,
        # export embeds them (graph.weights.standalone).
        self.proto = _program_copy(model)
        # Names the explainer added that a model tensor has: the builders may have read the
        # model's tensor by that name, so export.emit_explainer builds again on the model
        # with those tensors renamed (freed_model); renaming midway would leave them stale.
        self.clashes: set[str] = set()
        self._model_names = model_names(model)
        self.b = GraphBuilder(self.proto, model.infos, prefix="onnxplain/export",
                              weights=model.weights)
        self.copies = 1
        self.feeds = {spec.name: spec.name for spec in model.inputs}  # input -> what nodes see
        self.outputs = [o.name for o in self.proto.graph.output]
        self.added: dict[str, str] = {}  # added graph input/output -> its meaning
        self.chosen = ""  # the explained class per row, once target() ran
        self._batched = {name: name for name in self.outputs}

    @property
    def rows(self) -> str:
        """N, read from the first input as the user feeds it (never from the copies: nothing
        may be emitted before run_on_copies, whose renaming would reach it)."""
        return self.b.dim(self.model.inputs[0].name, 0)

    # ---- running the model on copies --------------------------------------------------
    def run_on_copies(self, count: int, makers: dict[str, CopyMaker],
                      clean_first: bool = False) -> None:
        """Let the original nodes see `count` copies of every row plus the clean row (after
        the copies, or before them with `clean_first`: DeepLIFT's rules want [x; x'])."""
        if self.copies != 1:
            raise RuntimeError("copies are set once")
        graph, b = self.proto.graph, self.b
        original = list(graph.node)
        del graph.node[:]
        # Inputs are read from their copies, outputs computed in all-rows form (batched()).
        renamed = {name: name + ALL_ROWS for name in self.outputs}
        for spec in self.model.inputs:
            inside = b.fresh(f"{spec.name}_copies")
            made = [makers[spec.name](b, spec.name)] if spec.name in makers else \
                [spec.name] * count
            order = [spec.name, *made] if clean_first else [*made, spec.name]
            graph.node.append(helper.make_node("Concat", order, [inside], axis=0,
                                               name=b.fresh("copies")))
            b.infos[inside] = b.info(spec.name)
            renamed[spec.name] = self.feeds[spec.name] = inside
        rename_reads(original, renamed)  # all at once: one conversion
        for node in original:
            node.output[:] = [renamed.get(name, name) for name in node.output]
        graph.node.extend(original)
        self._batch_outputs(count, 0 if clean_first else count)

    def take_model_nodes(self) -> list[onnx.NodeProto]:
        """Remove the model's nodes from the graph, for a method that runs them elsewhere (a
        Loop body: export.loop); call it before emitting anything."""
        if self.copies != 1 or len(self.proto.graph.node) != len(self.model.proto.graph.node):
            raise RuntimeError("the model's nodes are taken out first, once")
        nodes = list(self.proto.graph.node)
        del self.proto.graph.node[:]
        return nodes

    def put_back_stem(self, stem: Stem, nodes: Sequence[onnx.NodeProto], both: str) -> None:
        """Put the nodes of the input's affine stem (graph.stem) back, reading `both`
        ([x; x']) in place of the input: its frontier then holds 2N rows."""
        kept = [node for node in nodes if set(node.output) <= stem.region]
        rename_reads(kept, {stem.input: both})
        self.proto.graph.node.extend(kept)
        self.feeds[stem.input] = both

    def outputs_from(self, batched: dict[str, str]) -> None:
        """The original outputs as block 0 of `batched` (per output, a tensor computed on
        [x; x'] elsewhere), under their own names; block 1 stays readable (batched())."""
        graph, b = self.proto.graph, self.b
        self._batched.update(batched)
        self.copies = 2
        for name in self.outputs:
            graph.node.append(helper.make_node("Identity", [self.block(batched[name], 0)], [name],
                                               name=b.fresh("clean_output")))
            b.infos[name] = self.model.infos.get(name, TensorInfo(None, None))

    def _batch_outputs(self, count: int, clean: int) -> None:
        """The original outputs, now computed under their all-rows names (run_on_copies),
        read back from the clean block (index `clean` of count + 1) under their own."""
        graph, b = self.proto.graph, self.b
        for name in self.outputs:
            self._batched[name] = name + ALL_ROWS
            b.infos[self._batched[name]] = b.info(name)
        for info in graph.value_info:  # declared types follow the renamed outputs
            info.name = self._batched.get(info.name, info.name)
        self.copies = count + 1
        for name in self.outputs:  # the clean block, under the original name
            clean_rows = self.block(self._batched[name], clean)
            graph.node.append(helper.make_node("Identity", [clean_rows], [name],
                                               name=b.fresh("clean_output")))
            b.infos[name] = self.model.infos.get(name, TensorInfo(None, None))

    def block(self, tensor: str, index: int) -> str:
        """Rows [index * N, (index + 1) * N) of a tensor computed on the copies."""
        b = self.b
        start = b.op("Mul", self.rows, b.ints([index]))
        return b.slice(tensor, start, b.op("Add", start, self.rows), [0])

    # ---- target and gradients ---------------------------------------------------------
    def target(self) -> str:
        """The explained class per row: the `target` input where it is >= 0, else the
        predicted class (ArgMax of the clean output). Exposed as output `target_used`.
        With an output seed there is no class: the seed input is declared, "" returned."""
        if self.seed is not None:
            self._declare_seed()
            return ""
        if self.dense:
            self.declare_target()
            return ""
        if self.chosen:
            return self.chosen
        self.declare_target()
        chosen = chosen_class(self.b, self.output, TARGET)
        self.declare(chosen, TARGET_USED, "int64 [N]: the class each row was explained for",
                     TensorInfo(TensorProto.INT64, ("N",)))
        self.chosen = chosen
        return chosen

    def declare_target(self) -> None:
        """The `target` input: int64 [N], optional (default -1) or required. Runtimes that
        cannot feed inputs with a default (onnxruntime-node) need "required"."""
        optional = self.target_input == "optional"
        where = (f" ({describe_objective(self.dense, self.output, self.place.text())})"
                 if self.dense else "")
        self.add_input(TARGET, TensorProto.INT64,
                       ["target_rows" if optional else self.model.inputs[0].dims[0]],
                       np.array([NO_TARGET], np.int64) if optional else None,
                       "class to explain per row; -1: the predicted class" + where)

    def _declare_seed(self) -> None:
        """The `output_seed` input (export.seed): optional with the baked weights as
        default, or required with target_input "required" or a FED seed."""
        baked = not is_fed(self.seed)
        dims = (None, *self.seed.shape[1:]) if baked else self.model.output(self.output).dims
        self.add_input(OUTPUT_SEED, self.b.dtype(self.output),
                       None if dims is None else ["seed_rows", *dims[1:]],
                       self.seed if baked and self.target_input == "optional" else None,
                       f"weights on output '{self.output}' (one row for all rows, or one per "
                       "row); explained per row: sum(weights * output)")

    def add_input(self, name: str, dtype: int, shape: Sequence[str | int | None] | None,
                  default: np.ndarray | None, meaning: str) -> str:
        """Explainer input `name` (once; a later call returns it as it is): required where
        `default` is None (in-process runs feed it), else optional, an initializer of the
        same name being its default. A first axis named '<...>_rows' takes one row for all
        rows or one per row. Its description in `added` reads
        '<type> [<axes>][, optional]: <meaning>[; absent: <default>]'."""
        if name in self.added:
            return name
        self._check_free(name)
        self.proto.graph.input.append(helper.make_tensor_value_info(
            name, dtype, None if shape is None else list(shape)))
        if default is not None:
            self.proto.graph.initializer.append(numpy_helper.from_array(default, name))
        self.b.infos[name] = TensorInfo(dtype, None if shape is None else tuple(shape))
        optional = "" if default is None else ", optional"
        absent = "" if default is None else f"; absent: {_describe_default(default)}"
        self.added[name] = f"{_type_word(dtype)} {_axes_words(shape)}{optional}: {meaning}{absent}"
        return name

    def adopt_input(self, other: ExplainerGraph, name: str) -> str:
        """Input `name` of `other`'s program as an input of this one: its declaration,
        default and description (a program run inside this one reads it from here)."""
        if name in self.added:
            return name
        self._check_free(name)
        self.proto.graph.input.extend(v for v in other.proto.graph.input if v.name == name)
        self.proto.graph.initializer.extend(
            init for init in other.proto.graph.initializer if init.name == name)
        self.b.infos[name] = other.b.info(name)
        self.added[name] = other.added[name]
        return name

    def gradients(self, wrt: Sequence[str], rules: RuleSet = GRADIENT,
                  times_output: bool = False) -> dict[str, str]:
        """d(target score)/d(t) for t in `wrt`, every copy explaining its row's target (with
        `times_output` the seed is the score itself, LRP's initial relevance)."""
        return self.gradient_passes(wrt, rules, times_output=times_output)[""]

    def gradient_passes(self, wrt: Sequence[str], rules: RuleSet = GRADIENT,
                        passes: Sequence[Pass] = (), times_output: bool = False,
                        active_from: Sequence[str] = (), pre: Pre | None = None
                        ) -> dict[str, dict[str, str]]:
        """The gradients, and those of further `passes` (other rule sets, the same seed), by
        pass label ('' for the main one); `active_from` as add_gradients takes it, `pre` as
        gradient programs take it (the passes start from what it returns)."""
        # As gradient programs do: Relu after MaxPool, same outputs, less work.
        pool_after_relu_for(self.proto.graph, self.b.infos, {self.batched(self.output), *wrt},
                            rules, passes)
        seed = self._seed()
        if times_output:
            seed = self.b.op("Mul", seed, self._batched[self.output])
        start = self._batched[self.output]
        if pre is not None:
            start, seed = pre.emit(self.b, start, seed)
        computed = {"": add_gradients(self.b, {start: seed}, list(wrt), rules, active_from)}
        for extra in passes:
            computed[extra.label] = add_gradients(self.b, {start: seed}, list(extra.wrt),
                                                  extra.rules, extra.active_from)
        return computed

    def row_weights(self, b: GraphBuilder, scores: str,
                    inputs: Mapping[str, str] | None = None) -> str:
        """Weights shaped like `scores` (N rows of the explained output) whose product with
        them is the explained score: the output seed, the dense objective's weights, else
        the one-hot of each row's class (the `target` input, or the ArgMax of `scores`).
        `inputs`: where the N clean rows of each input are (in a Loop body that redefines
        the input names), for the padding masks of a dense objective."""
        if self.seed is not None:
            self._declare_seed()
            weights = b.op("Expand", OUTPUT_SEED, b.shape(scores))
        elif self.dense:
            self.declare_target()
            weights = dense_weights(b, self.model, scores, TARGET, self.dense, self.place,
                                    inputs or {})
        else:  # a Loop body's rows choose from their own outputs (the outer ones come later)
            chosen = self.target() if scores == self.output else chosen_class(b, scores, TARGET)
            # The classes counted on `scores` where its rank is known: a body that does not
            # define the output's name cannot read it (export.noise_program).
            weights = one_hot(b, chosen, scores if b.info(scores).rank is not None else
                              self.output)
        b.infos[weights] = b.info(self.output)
        return weights

    def _seed(self) -> str:
        """One-hot of the chosen class (or the output seed), for every copy of every row."""
        b = self.b
        if self.seed is not None or self.dense:
            weights = self.row_weights(b, self.output)
            rank = b.rank(self.output)
            return weights if self.copies == 1 else b.op(
                "Tile", weights, b.ints([self.copies] + [1] * (rank - 1)))
        chosen = self.target()
        if self.copies > 1:
            chosen = b.op("Tile", chosen, b.ints([self.copies]))
        return one_hot(b, chosen, self.output)

    def declare(self, tensor: str, name: str, meaning: str, info: TensorInfo | None = None
                ) -> None:
        b = self.b
        info = info or b.info(tensor)
        self._check_free(name)
        self.proto.graph.node.append(helper.make_node("Identity", [tensor], [name],
                                                      name=b.fresh("explainer_output")))
        dims = None if info.shape is None else list(info.shape)
        self.proto.graph.output.append(helper.make_tensor_value_info(name, info.dtype, dims))
        b.infos[name] = info
        self.added[name] = meaning

    def _check_free(self, name: str) -> None:
        """`name`, which the explainer adds, is no model input or output (one line), and
        is noted in `clashes` where a model tensor has it."""
        if name in self.added:
            return
        _refuse_model_end(self.model, name)
        if name in self._model_names:
            self.clashes.add(name)

    def batched(self, name: str) -> str:
        """What an original tensor is called inside the copies (the outputs were renamed)."""
        return self._batched.get(name, name)


def is_fed(value: object) -> bool:
    """`value` is FED: an input the in-process runs feed, with no default."""
    return isinstance(value, str) and value == FED


def _type_word(dtype: int) -> str:
    return helper.tensor_dtype_to_string(dtype).removeprefix("TensorProto.").lower()


def _axes_words(shape: Sequence[str | int | None] | None) -> str:
    """'[1 or N, 10]' for ['seed_rows', 10]; unknown trailing axes as '...'."""
    if shape is None:
        return "[1 or N, ...]"
    if not shape:
        return "scalar"
    words = ["1 or N" if isinstance(d, str) and d.endswith("_rows") else
             "N" if i == 0 and not isinstance(d, int) else str(d) if d is not None else "..."
             for i, d in enumerate(shape)]
    while len(words) > 1 and words[-2:] == ["...", "..."]:
        words.pop()
    return f"[{', '.join(words)}]"


def _describe_default(default: np.ndarray) -> str:
    """A default of one value by its value, else as given at export."""
    return f"{default.item():g}" if default.size == 1 else "the values given at export"


def freed_model(model: Model, names: Sequence[str]) -> Model:
    """`model` with its tensors called `names` renamed (free_name), itself where it has
    none: the same computation, whose inputs and outputs keep their names. Its proto is
    already a light copy, whose renamed stubs hold their bytes (_program_copy)."""
    for name in names:
        _refuse_model_end(model, name)
    clashing = [name for name in names if name in model_names(model)]
    if not clashing:  # nearly always: no conversion
        return model
    view = to_ir(_program_copy(model))
    infos = dict(model.infos)  # the model's own stay as they are
    for name in clashing:
        fresh = free_name(view, model, name)
        if name in infos:
            infos[fresh] = infos.pop(name)
    freed = Model(to_proto(view), model.path, infos, model.weights, model.file_ir_version)
    freed.derived[FREED] = True
    return freed


def _program_copy(model: Model) -> onnx.ModelProto:
    """A copy of `model` to build a program on: a light copy, or for a freed model (already
    one) a plain copy (a light copy would make a renamed weight a stub of a name the
    model's weights lack)."""
    if not model.derived.get(FREED):
        return light_copy(model.proto)
    copy = onnx.ModelProto()
    copy.CopyFrom(model.proto)
    return copy


def free_name(view: onnx_ir.Model, model: Model, name: str) -> str:
    """An input or output the explainer adds (`name`) is free in `view` (of `model`): each
    value of that name (a Reshape target called 'target', a tensor called 'score'), in a
    subgraph too, is renamed, and its reads follow; the new name is returned. A shared stub
    (graph.weights) stands for the model's initializer of its name: renamed, it holds that
    initializer's bytes."""
    graphs = [view.graph, *view.graph.subgraphs()]
    taken = {found for graph in graphs for found in values(graph)}
    fresh = f"onnxplain/export/model_{name}"
    while fresh in taken:
        fresh += "_"
    for value in [v for graph in graphs for v in defined(graph) if v.name == name]:
        tensor = value.const_value
        if isinstance(tensor, onnx_ir.serde.TensorProtoTensor) and is_stub(tensor.raw):
            # rare (a weight called 'target'): one tensor copied (to_proto renames the
            # TensorProto a value holds, so never the model's own)
            shared = onnx.TensorProto()
            shared.CopyFrom(next(i for i in model.weights.proto.graph.initializer
                                 if i.name == name))
            value.const_value = onnx_ir.serde.TensorProtoTensor(shared)
        value.name = fresh
    return fresh


def model_names(model: Model) -> frozenset[str]:
    """Every tensor name of `model`, in its subgraphs too (computed once per model, from
    the protobuf: the check that nearly always finds no clash converts nothing)."""
    if MODEL_NAMES not in model.derived:
        model.derived[MODEL_NAMES] = frozenset(
            name for graph in nested_graphs(model.proto.graph)
            for name in (*(v.name for v in graph.input), *(i.name for i in graph.initializer),
                         *(n for node in graph.node for n in (*node.input, *node.output))))
    return model.derived[MODEL_NAMES]  # type: ignore[return-value]


def _refuse_model_end(model: Model, name: str) -> None:
    if name in {v.name for v in (*model.proto.graph.input, *model.proto.graph.output)}:
        raise ModelError(f"the model has an input or output named '{name}', which the "
                         "explainer adds: rename it in the model")
