"""Rows per run is one knob (issue 19, item 3): RunPolicy decides the rows of a run and of a
Loop iteration in one place, is passed explicitly (an explain call's batch_size never changes
the engine), and a Loop's rows per iteration is an input of the one program, not a new one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxplain import Explainer, InputError
from onnxplain.export import LOOP_ROWS
from onnxplain.export.loop import ROWS_PER_ITERATION
from onnxplain.exporter import export_explainer
from onnxplain.runtime.batching import (
    DEFAULT_BUDGET_MB,
    PROGRAM_FACTOR,
    RunPolicy,
    forward_bytes_per_row,
    rows_per_run,
)
from onnxplain.runtime.session import Session

ROOT = Path(__file__).resolve().parents[1]
IG = {"method": "integrated_gradients", "n_steps": 8, "delta_tolerance": 1e9}


@pytest.fixture(scope="module")
def digits(zoo):
    from model_zoo.digits import digits_data

    return digits_data()[2][:6]


def test_the_defaults_follow_the_memory_budget(digits_path, digits):
    policy = RunPolicy()
    assert (policy.memory_budget_mb, policy.batch_size, policy.rows_per_iteration) == (
        DEFAULT_BUDGET_MB, None, None)
    explainer = Explainer(str(digits_path), "cpu", memory_budget_mb=0.5)
    feeds = {"image": digits}
    budget = rows_per_run(explainer.model, feeds, 0.5)
    per_row = PROGRAM_FACTOR * forward_bytes_per_row(explainer.model, feeds)
    assert budget == max(1, int(0.5 * 2**20 // per_row)) >= 1
    policy = explainer.policy
    assert policy == RunPolicy(0.5)
    assert policy.rows_per_run(explainer.model, feeds) == budget
    assert policy.loop_rows(explainer.model, feeds) == budget  # one knob
    assert policy.derive(batch_size=3).rows_per_run(explainer.model, feeds) == 3
    assert policy.derive(batch_size=3).loop_rows(explainer.model, feeds) == 3
    assert policy.derive(rows_per_iteration=5).loop_rows(explainer.model, feeds) == 5
    # None, and 0 (internal_batch_size's "as the budget allows"), leave a field as it is.
    assert policy.derive() is policy and policy.derive(rows_per_iteration=0) is policy


@pytest.mark.parametrize("field,value", [
    ("memory_budget_mb", 0), ("memory_budget_mb", -1.0), ("memory_budget_mb", float("nan")),
    ("memory_budget_mb", "512"), ("memory_budget_mb", float("inf")),
    ("memory_budget_mb", 10**400), ("memory_budget_mb", np.uint8(0)),
    ("memory_budget_mb", True), ("batch_size", 0), ("batch_size", -2), ("batch_size", 1.5),
    ("batch_size", True), ("batch_size", np.int64(0)), ("rows_per_iteration", 0),
    ("rows_per_iteration", "8")])
def test_bad_values_are_one_line_errors(field, value):
    with pytest.raises(InputError, match=f"^{field} must be") as raised:
        RunPolicy(**{field: value})
    message = str(raised.value)
    assert "\n" not in message and "np." not in message and len(message) < 200
    if field == "memory_budget_mb":
        assert "finite" in message


def test_a_numpy_budget_is_a_float():
    """A numpy integer budget would overflow in rows_per_run's byte arithmetic."""
    policy = RunPolicy(np.uint8(200))
    assert type(policy.memory_budget_mb) is float and policy == RunPolicy(200)


def test_the_public_names_refuse_bad_values(digits_path, digits):
    with pytest.raises(InputError, match="memory_budget_mb must be positive"):
        Explainer(str(digits_path), "cpu", memory_budget_mb=0)
    explainer = Explainer(str(digits_path), "cpu")
    with pytest.raises(InputError, match="batch_size must be"):
        explainer.explain(digits[:1], batch_size=0)
    with pytest.raises(InputError, match="internal_batch_size"):
        explainer.explain(digits[:1], internal_batch_size=-1, **IG)


def test_a_calls_batch_size_is_its_own(digits_path, digits, monkeypatch, session_rows):
    """explain(batch_size=1) runs rows one at a time; an explain without one, even one that
    starts while the first is running, runs the budget's chunks: no engine state changed."""
    x = digits
    budget = 4 * PROGRAM_FACTOR * forward_bytes_per_row(Explainer(str(digits_path)).model,
                                                        {"image": x}) / 2**20
    explainer = Explainer(str(digits_path), "cpu", memory_budget_mb=budget * 1.01)
    policy = explainer.policy
    expected = explainer.explain(x, target=2)["image"]
    seen = session_rows
    del seen[:]  # from here on
    explainer.explain(x, target=2)
    assert seen == [4, 2]
    inner: list[np.ndarray | None] = []
    engine = explainer.engine
    attributes = dict(vars(engine))
    changed: list[str] = []  # checked at every run of the outer call, raised after it
    run = Session.run

    def nested(self, names, feeds):  # an explain call beginning inside another
        if explainer.engine is not engine or engine.policy != policy:
            changed.append(f"policy {engine.policy} during a batch_size=1 call")
        changed.extend(f"engine.{name} changed" for name, value in vars(engine).items()
                       if attributes.get(name, changed) is not value)
        if not inner:
            inner.append(None)
            inner[0] = explainer.explain(x, target=2)["image"]
        return run(self, names, feeds)

    del seen[:]
    monkeypatch.setattr(Session, "run", nested)
    outer = explainer.explain(x, target=2, batch_size=1)["image"]
    monkeypatch.setattr(Session, "run", run)
    assert not changed, changed
    assert seen == [4, 2] + [1] * 6  # the inner call's chunks, then the outer's
    np.testing.assert_allclose(outer, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(inner[0], expected)
    del seen[:]
    explainer.explain(x, target=2)
    assert seen == [4, 2]
    assert explainer.policy == policy and explainer.engine.policy == policy


def test_a_view_shares_the_programs_and_changes_nothing(digits_path, digits):
    explainer = Explainer(str(digits_path), "cpu")
    engine = explainer.engine
    view = engine.with_policy(RunPolicy(batch_size=2))
    assert engine.with_policy(engine.policy) is engine
    assert view.rows_per_run({"image": digits}) == 2
    assert engine.rows_per_run({"image": digits}) == explainer.policy.rows_per_run(
        explainer.model, {"image": digits})
    assert view._programs is engine._programs and view.base is engine  # noqa: SLF001


def _close(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-6) -> None:
    """Equal up to float32 sums in another order (the points' sums group differently per
    iteration): within rtol of the largest value (elementwise, near-cancelling sums of small
    values differ by ~1e-5 relative)."""
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= rtol * float(np.abs(expected).max())


def _program_count(engine) -> int:
    return len(engine._programs) + sum(len(v) for v in engine._specialised.values())  # noqa: SLF001


def _fed_rows(monkeypatch) -> list[np.ndarray]:
    """The rows per iteration fed to every session run from now on."""
    fed: list[np.ndarray] = []
    run = Session.run

    def spied(self, names, feeds):
        if ROWS_PER_ITERATION in feeds:
            fed.append(feeds[ROWS_PER_ITERATION])
        return run(self, names, feeds)

    monkeypatch.setattr(Session, "run", spied)
    return fed


def test_rows_per_iteration_is_a_feed_of_one_program(digits_path, digits, monkeypatch):
    """In process, another internal_batch_size (or budget) is another feed of the same
    program; the numbers do not depend on it beyond rounding."""
    x = digits[:5]
    explainer = Explainer(str(digits_path), "cpu")
    fed = _fed_rows(monkeypatch)
    budget = explainer.policy.loop_rows(explainer.model, {"image": x})
    assert budget not in (2, 3)
    for options, rows in (({"internal_batch_size": 0}, budget),
                          ({"internal_batch_size": 3}, 3),
                          ({"internal_batch_size": 0, "batch_size": 2}, 2)):
        del fed[:]
        explainer.explain(x, target=1, **{**IG, **options})
        assert fed and all(value.dtype == np.int64 and value.ndim == 0 and int(value) == rows
                           for value in fed), (options, fed)
    reference = explainer.explain(x, target=1, internal_batch_size=1, **IG)
    count = _program_count(explainer.engine)
    for rows in (0, 3, 16, 1000):
        got = explainer.explain(x, target=1, internal_batch_size=rows, **IG)
        _close(got["image"], reference["image"])
    small = Explainer(explainer.model, "cpu", memory_budget_mb=0.05)
    assert small.policy.loop_rows(small.model, {"image": x}) < 8
    _close(small.explain(x, target=1, **IG)["image"], reference["image"])
    assert _program_count(explainer.engine) == count == 1


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_the_exported_default_is_in_the_metadata_and_any_feed_agrees(digits_path, digits):
    x = digits[:4]
    exported = export_explainer(str(digits_path), "integrated_gradients", n_steps=8,
                                internal_batch_size=12)
    props = {p.key: p.value for p in exported.metadata_props}
    assert props["onnxplain." + ROWS_PER_ITERATION] == "12"
    assert "optional" in json.loads(props["onnxplain.added"])[ROWS_PER_ITERATION]
    default = _run(exported, {"image": x})["attribution/image"]
    for rows in (1, 5, 12, 64):
        fed = _run(exported, {"image": x, ROWS_PER_ITERATION: np.array(rows, np.int64)})
        _close(fed["attribution/image"], default)
    # The same program in process, fed the exported default: the same numbers, bit for bit.
    same = Explainer(str(digits_path), "cpu").explain(x, internal_batch_size=12,
                                                      **{**IG, "delta_tolerance": 1e9})
    np.testing.assert_array_equal(same["image"], default)
    plain = export_explainer(str(digits_path), "integrated_gradients", n_steps=8)
    assert {p.key: p.value for p in plain.metadata_props}[
        "onnxplain." + ROWS_PER_ITERATION] == str(LOOP_ROWS)
    without = export_explainer(str(digits_path), "saliency")
    assert "onnxplain." + ROWS_PER_ITERATION not in {p.key for p in without.metadata_props}


_PEAK = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import model_zoo
    from onnxplain import Explainer
    explainer = Explainer(str(model_zoo.model_path("resnet18_64")), "cpu", progress=False,
                          memory_budget_mb=float(sys.argv[3]))
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    explainer.explain(x[:1], method="integrated_gradients", n_steps=2, delta_tolerance=1e9)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    explainer.explain(x, method="integrated_gradients", n_steps=int(sys.argv[2]),
                      delta_tolerance=1e9)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before": before, "after": after}))
""")


def _peak_growth_kb(steps: int, budget_mb: float = 100) -> int:
    done = subprocess.run([sys.executable, "-c", _PEAK, str(ROOT), str(steps), str(budget_mb)],
                          capture_output=True, text=True, check=True)
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks["after"] - peaks["before"]


def test_in_process_memory_is_flat_in_the_number_of_steps(zoo):
    """4 rows of ResNet-18 at 64x64 in process (1.8 MB of activations a row): 128 steps
    folded into one batch would hold 512 rows (about 1 GB more than 8 steps); under a 100 MB
    budget the Loop runs 16 rows an iteration either way."""
    zoo.model_path("resnet18_64")
    few, many = _peak_growth_kb(8), _peak_growth_kb(128)
    assert many < few + 150_000, (few, many)


def test_the_cli_takes_the_budget_and_refuses_a_bad_one(digits_path, digits, tmp_path):
    from tests.cli_helpers import run

    np.save(tmp_path / "x.npy", digits[:3])
    common = ("explain", str(digits_path), "-i", str(tmp_path / "x.npy"), "-q", "-t", "1",
              "-o", str(tmp_path / "out"))
    for bad in ("0", "-3", "lots", "nan", "inf", "-inf"):
        refused = run(*common, "--memory-budget-mb", bad)
        assert refused.exit_code == 2 and "--memory-budget-mb" in refused.stderr, bad
        assert "memory_budget_mb" not in refused.stderr and "Traceback" not in refused.stderr
    done = run(*common, "--memory-budget-mb", "0.05", "--batch-size", "2")
    assert done.exit_code == 0, done.stderr
    expected = Explainer(str(digits_path), "cpu").explain(digits[:3], target=1)["image"]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "attribution.npy"), expected,
                               rtol=1e-5, atol=1e-7)


def test_parts_take_the_base_policy_and_the_callers_progress(zoo, monkeypatch):
    """Layer IG on the model cut at the embedding (the path of embeddings computed from
    other inputs too): the cached cut engine keeps the explainer's policy after a batch_size=1 call,
    and progress=False reaches it (no bar is made, however long the run)."""
    import contextlib

    import tqdm

    from onnxplain.methods import layer_integrated_gradients as layer_ig
    from onnxplain.runtime.progress import NoBar

    monkeypatch.setattr(layer_ig, "_reads_ids_alone", lambda model, source: False)
    bars: list[str] = []

    def bar(*args, **kwargs):
        bars.append(kwargs["desc"])
        return contextlib.nullcontext(NoBar())

    monkeypatch.setattr(tqdm, "tqdm", bar)
    monkeypatch.setattr("onnxplain.runtime.progress.PROGRESS_AFTER_S", 0.0)
    feeds = {k: v[:2] for k, v in zoo.sample("bert_small").items()}
    explainer = Explainer(str(zoo.model_path("bert_small")), "cpu", progress=False)
    explainer.explain(feeds, method="layer_integrated_gradients", n_steps=4, batch_size=1,
                      delta_tolerance=1e9)
    assert bars == []
    (cut,) = layer_ig._CUT_ENGINES[explainer.engine].values()  # noqa: SLF001
    assert cut.policy == explainer.policy and cut.progress


def test_the_weights_are_sized_once_for_an_engine_and_its_views(digits_path, digits,
                                                                monkeypatch):
    from onnxplain.runtime import engine as engine_module

    sized: list[int] = []
    size = engine_module.payload_bytes

    def counted(proto):
        sized.append(1)
        return size(proto)

    monkeypatch.setattr(engine_module, "payload_bytes", counted)
    explainer = Explainer(str(digits_path), "cpu")
    for batch_size in (None, 1, 2, 4):
        explainer.explain(digits, target=1, batch_size=batch_size)
    assert len(sized) == 1


def test_report_and_generate_take_the_budget_and_batch_size(digits_path, digits, zoo,
                                                            tmp_path, monkeypatch, session_rows):
    """Both commands explain, so both take --memory-budget-mb and --batch-size: the rows
    of every run follow them, and a bad budget is refused naming the flag."""
    from tests.cli_helpers import run

    np.save(tmp_path / "x.npy", digits[:5])
    report = ("report", str(digits_path), "-i", str(tmp_path / "x.npy"), "-m", "saliency",
              "--no-scores", "-q", "-o", str(tmp_path / "report"))
    folder = zoo.build("causal_lm")
    generate = ("generate", str(folder / "model.onnx"), "--text", "alice saw a brown cow",
                "--vocab", str(folder / "vocab.txt"), "-n", "1", "-q", "-m",
                "layer_integrated_gradients", "-O", "n_steps=8", "-o", str(tmp_path / "gen"))
    for command in (report, generate):
        for bad in ("nan", "inf", "0"):
            refused = run(*command, "--memory-budget-mb", bad)
            assert refused.exit_code == 2 and "--memory-budget-mb" in refused.stderr, bad
    seen = session_rows
    del seen[:]  # from here on
    done = run(*report, "--batch-size", "2")
    assert done.exit_code == 0, done.stderr
    assert seen and max(seen) == 2
    fed = _fed_rows(monkeypatch)
    done = run(*generate, "--batch-size", "3")
    assert done.exit_code == 0, done.stderr
    assert fed and all(int(value) == 3 for value in fed)
    del fed[:]
    done = run(*generate, "--memory-budget-mb", "0.001")
    assert done.exit_code == 0, done.stderr
    assert fed and all(int(value) == 1 for value in fed)  # the budget's one row


@pytest.mark.parametrize("method, options", [("occlusion", {"window": 1}),
                                             ("rise", {"n_masks": 64})])
def test_perturbed_copies_count_against_the_budget(monkeypatch, method, options):
    """A Loop iteration holds each perturbed copy and its mask besides the model's
    activations: on a linear model (whose activations are tiny) the rows per iteration are
    what the copies allow, so memory stays within the budget (017b665 sized them from the
    activations alone: occlusion of a 3x128x128 image peaked at 4.4 GB under 512 MB)."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxplain.methods._perturb import COPY_BYTES

    size = 3 * 32 * 32
    weights = numpy_helper.from_array(np.ones((size, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"],
                                                                        ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    budget = 4.0
    explainer = Explainer(model, "cpu", memory_budget_mb=budget, progress=False)
    fed = _fed_rows(monkeypatch)
    x = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    explainer.explain(x, method, target=0, **options)
    rows = {int(value) for value in fed}
    assert rows and max(rows) * COPY_BYTES * size * 4 <= budget * 2**20, rows
