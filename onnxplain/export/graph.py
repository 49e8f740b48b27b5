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

from ..autodiff.build import add_gradients, rename_reads
from ..autodiff.commute import pool_after_relu_for
from ..autodiff.program import Pass, chosen_class, one_hot
from ..autodiff.registry import GRADIENT, RuleSet
from ..errors import InputError, ModelError
from ..graph.builder import GraphBuilder
from ..graph.model import Model
from ..graph.shapes import TensorInfo
from ..graph.stem import Stem
from ..graph.weights import light_copy
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
from .seed import FED_SEED, OUTPUT_SEED, declare_seed_input, dense_weights, seed_row

TARGET = "target"
TARGET_USED = "target_used"
ALL_ROWS = "/all_rows"
NO_TARGET = -1
TARGET_INPUTS = ("optional", "required")

# Makes the copies of one input: (builder, input tensor) -> the copies stacked block after
# block, [count * N, ...]. Inputs without a maker are repeated.
CopyMaker = Callable[[GraphBuilder, str], str]


class ExplainerGraph:
    """A copy of `model` being turned into an explainer; emit with `b`, then `finish()`."""

    def __init__(self, model: Model, output: str, target_input: str = "optional",
                 output_seed: np.ndarray | str | None = None, place: Place = EVERYWHERE,
                 sources: Mapping[str, str] | None = None, any_output: bool = False):
        """`output_seed`: one row of weights baked in as the default (export.seed), or
        FED_SEED for an `output_seed` input without a default (in-process runs feed one row
        per row). `sources`: input -> the tensor its attribution is taken at (in-process:
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
        self.seed = output_seed if output_seed is None or output_seed is FED_SEED else \
            seed_row(model, output, output_seed)
        self.sources = None if sources is None else dict(sources)
        if target_input not in TARGET_INPUTS:
            raise InputError(f"target_input must be one of {', '.join(TARGET_INPUTS)}, got "
                             f"'{target_input}'")
        self.model, self.output, self.target_input = model, output, target_input
        # Large weights stay the model's (stubs): in-process sessions read them from there,
        # export embeds them (graph.weights.standalone).
        self.proto = light_copy(model.proto)
        self.b = GraphBuilder(self.proto, model.infos, prefix="onnxplain/export",
                              weights=model.weights)
        _free_names(self.proto.graph, self.b, (TARGET, TARGET_USED, OUTPUT_SEED))
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
        for spec in self.model.inputs:
            inside = b.fresh(f"{spec.name}_copies")
            made = [makers[spec.name](b, spec.name)] if spec.name in makers else \
                [spec.name] * count
            order = [spec.name, *made] if clean_first else [*made, spec.name]
            graph.node.append(helper.make_node("Concat", order, [inside], axis=0,
                                               name=b.fresh("copies")))
            b.infos[inside] = b.info(spec.name)
            rename_reads(original, {spec.name: inside})
            self.feeds[spec.name] = inside
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
        """Rename the original outputs to their all-rows form and read the clean block
        (index `clean` of count + 1) back under the original names."""
        graph, b = self.proto.graph, self.b
        for name in self.outputs:
            batched = name + ALL_ROWS
            _rename_everywhere(graph, name, batched)
            b.infos[batched] = b.info(name)
            self._batched[name] = batched
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
            declare_seed_input(self)
            return ""
        if self.dense:
            self._declare_target()
            return ""
        if self.chosen:
            return self.chosen
        self._declare_target()
        chosen = chosen_class(self.b, self.output, TARGET)
        self.declare(chosen, TARGET_USED, "int64 [N]: the class each row was explained for",
                     TensorInfo(TensorProto.INT64, ("N",)))
        self.chosen = chosen
        return chosen

    def _declare_target(self) -> None:
        """The `target` input, once: int64 [N], optional (default -1) or required."""
        if TARGET in self.added:
            return
        b, graph = self.b, self.proto.graph
        optional = self.target_input == "optional"
        rows = "target_rows" if optional else self.model.inputs[0].dims[0]
        graph.input.append(helper.make_tensor_value_info(TARGET, TensorProto.INT64, [rows]))
        if optional:
            # An initializer of the same name makes the input optional: [-1] = predicted
            # class. Runtimes that cannot feed such inputs (onnxruntime-node) need "required".
            graph.initializer.append(numpy_helper.from_array(np.array([NO_TARGET], np.int64),
                                                             TARGET))
        b.infos[TARGET] = TensorInfo(TensorProto.INT64, (rows,))
        where = (f" ({describe_objective(self.dense, self.output, self.place.text())})"
                 if self.dense else "")
        self.added[TARGET] = ("int64 [N]" + (", optional" if optional else "") +
                              ": class to explain per row; -1" + (" or absent" if optional
                                                                   else "") +
                              ": the predicted class" + where)

    def gradients(self, wrt: Sequence[str], rules: RuleSet = GRADIENT,
                  times_output: bool = False) -> dict[str, str]:
        """d(target score)/d(t) for t in `wrt`, every copy explaining its row's target (with
        `times_output` the seed is the score itself, LRP's initial relevance)."""
        return self.gradient_passes(wrt, rules, times_output=times_output)[""]

    def gradient_passes(self, wrt: Sequence[str], rules: RuleSet = GRADIENT,
                        passes: Sequence[Pass] = (), times_output: bool = False
                        ) -> dict[str, dict[str, str]]:
        """The gradients, and those of further `passes` (other rule sets, the same seed), by
        pass label ('' for the main one)."""
        # As gradient programs do: Relu after MaxPool, same outputs, less work.
        pool_after_relu_for(self.proto.graph, self.b.infos, {self.batched(self.output), *wrt},
                            rules, passes)
        seed = self._seed()
        if times_output:
            seed = self.b.op("Mul", seed, self._batched[self.output])
        computed = {"": add_gradients(self.b, {self._batched[self.output]: seed}, list(wrt),
                                      rules)}
        for extra in passes:
            computed[extra.label] = add_gradients(self.b, {self._batched[self.output]: seed},
                                                  list(extra.wrt), extra.rules,
                                                  extra.active_from)
        return computed

    def row_weights(self, b: GraphBuilder, scores: str,
                    inputs: Mapping[str, str] | None = None) -> str:
        """Weights shaped like `scores` (N rows of the explained output) whose product with
        them is the explained score: the output seed, the dense objective's weights, else
        the one-hot of each row's class (the `target` input, or the ArgMax of `scores`).
        `inputs`: where the N clean rows of each input are (in a Loop body that redefines
        the input names), for the padding masks of a dense objective."""
        if self.seed is not None:
            declare_seed_input(self)
            weights = b.op("Expand", OUTPUT_SEED, b.shape(scores))
        elif self.dense:
            self._declare_target()
            weights = dense_weights(b, self.model, scores, TARGET, self.dense, self.place,
                                    inputs or {})
        else:  # a Loop body's rows choose from their own outputs (the outer ones come later)
            chosen = self.target() if scores == self.output else chosen_class(b, scores, TARGET)
            weights = one_hot(b, chosen, self.output)
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
        self.proto.graph.node.append(helper.make_node("Identity", [tensor], [name],
                                                      name=b.fresh("explainer_output")))
        dims = None if info.shape is None else list(info.shape)
        self.proto.graph.output.append(helper.make_tensor_value_info(name, info.dtype, dims))
        b.infos[name] = info
        self.added[name] = meaning

    def batched(self, name: str) -> str:
        """What an original tensor is called inside the copies (the outputs were renamed)."""
        return self._batched.get(name, name)


def _free_names(graph: onnx.GraphProto, b: GraphBuilder, names: Sequence[str]) -> None:
    """The explainer's own inputs and outputs (`names`) are free: a tensor of the model's
    of that name is renamed inside (a Reshape target called 'target'); a model input or
    output of that name cannot be, one line."""
    ends = {v.name for v in (*graph.input, *graph.output)}
    taken = {o for node in graph.node for o in node.output} | \
        {init.name for init in graph.initializer}
    for name in names:
        if name in ends:
            raise ModelError(f"the model has an input or output named '{name}', which the "
                             "explainer adds: rename it in the model")
        if name in taken:
            fresh = b.fresh(name)
            _rename_everywhere(graph, name, fresh)
            for init in graph.initializer:
                if init.name == name:
                    init.name = fresh
            if name in b.infos:
                b.infos[fresh] = b.infos[name]


def _rename_everywhere(graph: onnx.GraphProto, old: str, new: str) -> None:
    rename_reads(graph.node, {old: new})
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in graph.value_info:
        if value.name == old:
            value.name = new
