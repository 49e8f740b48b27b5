"""Shapley value sampling against Captum's ShapleyValueSampling fed the same permutations
(its `permutation_generator` attribute, which Captum's own ShapleyValues sets to every
permutation), against exact Shapley values enumerated in numpy from the torch model on
<= 8 features (within the estimator's own standard error, computed exactly over all F!
permutations), and its invariants: the exported program gives what explain gives bit for
bit, a batch gives its rows one by one, efficiency sum(phi) = S(x) - S(baseline) per row."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import onnxplain
from onnxplain import metrics
from onnxplain.errors import InputError
from onnxplain.export.shapley import most_coalitions, permutations, plan
from onnxplain.exporter import export_explainer

from ..conftest import require
from ..export.test_export import _run
from .test_kernel_shap import brute_force_shapley, subsets

METHOD = "shapley_sampling"


class Case:
    """A zoo model: its explainer, torch original and a few rows with targets."""

    def __init__(self, zoo, name: str, rows: int = 4):
        self.torch = require("torch")
        self.module = zoo.load_torch(name).eval()
        self.explainer = onnxplain.Explainer(str(zoo.model_path(name)), "cpu", progress=False)
        (self.input, x), = zoo.sample(name).items()
        self.x = x[:rows]
        self.targets = (np.arange(rows) * 3 + 1) % 10

    def explain(self, **options) -> onnxplain.Attribution:
        return self.explainer.explain({self.input: self.x}, method=METHOD,
                                      target=self.targets, **options)

    def scores(self, points: np.ndarray, target: int) -> np.ndarray:
        """The torch model's score of class `target` at each point, float64."""
        with self.torch.no_grad():
            out = self.module(self.torch.from_numpy(np.ascontiguousarray(points)))
        return out[:, target].double().numpy()


@pytest.fixture(scope="module")
def cnn(zoo):
    return Case(zoo, "digits_cnn")


@pytest.fixture(scope="module")
def mlp(zoo):
    return Case(zoo, "digits_mlp")


def column_groups(count: int, columns: int = 64) -> np.ndarray:
    """A feature mask putting the 64 digit pixels into `count` contiguous groups."""
    return (np.arange(columns) * count // columns).astype(np.int64)


def captum(case: Case, mask: np.ndarray, n_samples: int, seed: int, baseline) -> np.ndarray:
    """Captum's attributions with the permutations onnxplain draws for (F, n, seed)."""
    from captum.attr import ShapleyValueSampling

    torch = case.torch
    order = permutations(int(mask.max()) + 1, n_samples, seed)
    explainer = ShapleyValueSampling(case.module)
    explainer.permutation_generator = lambda features, samples: (list(p) for p in order)
    row = np.broadcast_to(np.asarray(baseline, case.x.dtype), case.x.shape[1:])
    baselines = torch.from_numpy(row[None].copy())
    return explainer.attribute(torch.from_numpy(case.x), baselines=baselines,
                               target=torch.from_numpy(case.targets),
                               feature_mask=torch.from_numpy(mask[None]),
                               n_samples=n_samples).numpy()


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("baseline", ["zero", "row"])
def test_cnn_equals_captum_fed_the_same_permutations(cnn, baseline):
    base = 0.0 if baseline == "zero" else np.random.default_rng(1).random(
        (1, 8, 8)).astype(np.float32)
    result = cnn.explain(n_samples=12, cell=2, seed=5, baseline=base)
    mask = result.extras["feature_mask"][0]
    assert int(mask.max()) + 1 == 16  # 2x2-pixel cells over the 8x8 image
    want = captum(cnn, mask, 12, 5, base)
    assert relative_error(result[cnn.input], want) < 1e-5


def test_tabular_groups_equal_captum_fed_the_same_permutations(mlp):
    mask = column_groups(7)
    base = np.random.default_rng(2).random(64).astype(np.float32)
    result = mlp.explain(features=mask, n_samples=30, seed=11, baseline=base)
    assert relative_error(result[mlp.input], captum(mlp, mask, 30, 11, base)) < 1e-5
    # Each element carries its group's value: the per-feature values spread by the mask.
    np.testing.assert_array_equal(result[mlp.input],
                                  result.extras["values"][:, mask].astype(np.float32))


def coalition_scores(case: Case, row: np.ndarray, target: int, mask: np.ndarray,
                     background: np.ndarray) -> np.ndarray:
    """v(S) for every subset S (subsets() order): the torch score, the absent groups from
    each background row, averaged over them."""
    width = int(mask.max()) + 1
    present = subsets(width)[:, mask]  # [2^F, 64]
    points = np.where(present[:, None], row, background[None])  # [2^F, B, 64]
    return case.scores(points.reshape(-1, row.size), target).reshape(
        2 ** width, -1).mean(axis=1)


def joining_changes(values: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """[P, F]: v(prefix + f) - v(prefix) where each feature f joins, per permutation
    (values in subsets() order: bit f of a subset's index holds feature f)."""
    bits = 1 << orders
    before = np.cumsum(bits, axis=1) - bits  # the prefix each feature joins
    out = np.empty(orders.shape)
    np.put_along_axis(out, orders, values[before + bits] - values[before], axis=1)
    return out


@pytest.mark.parametrize("width, baseline", [(5, "zero"), (8, "background")])
def test_estimates_exact_shapley_within_its_standard_error(mlp, width, baseline):
    """F <= 8 groups: v(S) of all 2^F subsets from the torch model. The estimate is the
    mean of the drawn permutations' changes (exactly, here also over background rows,
    which Captum does not take), and lies within 5 standard errors of the exact Shapley
    values, the spread taken over all F! permutations (20,000 draws: permutations drawn
    from one sample's consecutive words, which favour some orders, miss by about 20)."""
    samples, seed = 20_000, 3
    mask = column_groups(width)
    background = (np.zeros((1, 64), np.float32) if baseline == "zero" else
                  np.random.default_rng(4).random((3, 64)).astype(np.float32) * 16)
    result = mlp.explain(features=mask, n_samples=samples, seed=seed,
                         baseline=0.0 if baseline == "zero" else background)
    assert result.extras["coalitions"] == 2 ** width - 1  # each prefix scored once
    drawn = permutations(width, samples, seed)
    every = np.array(list(itertools.permutations(range(width))))
    for row, target in enumerate(mlp.targets):
        values = coalition_scores(mlp, mlp.x[row], int(target), mask, background)
        got = result.extras["values"][row]
        sampled = joining_changes(values, drawn).mean(axis=0)
        assert relative_error(got, sampled) < 1e-5
        changes = joining_changes(values, every)
        exact = brute_force_shapley(values, width)
        np.testing.assert_allclose(changes.mean(axis=0), exact, atol=1e-9)  # the oracle
        spread = changes.std(axis=0) / math.sqrt(samples)
        assert np.all(np.abs(got - exact) <= 5 * spread + 1e-5 * np.abs(exact).max())


def test_permutations_are_uniform(mlp):
    """Each of the 24 orders of 4 features about equally often (chi-square, 23 degrees of
    freedom, p < 1e-6 at 66), and another seed draws other permutations."""
    drawn = permutations(4, 4800, 0)
    assert (np.sort(drawn, axis=1) == np.arange(4)).all()
    codes = (drawn * 4 ** np.arange(4)).sum(axis=1)
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 24
    assert ((counts - 200) ** 2 / 200).sum() < 66
    assert not np.array_equal(permutations(4, 50, 0), permutations(4, 50, 1))


def test_efficiency_per_row(cnn):
    """sum(phi) = S(x) - S(baseline) in every row (each permutation telescopes), with both
    scores from the torch model; the completeness metric reads it from the extras."""
    base = 0.25
    result = cnn.explain(n_samples=5, baseline=base)
    values = result.extras["values"]
    assert values.shape == (4, 64)  # an 8x8 grid over the 8x8 image: one pixel each
    fx = np.array([cnn.scores(cnn.x[i:i + 1], t)[0] for i, t in enumerate(cnn.targets)])
    blank = np.full_like(cnn.x[:1], base)
    fb = np.array([cnn.scores(blank, t)[0] for t in cnn.targets])
    np.testing.assert_allclose(values.sum(axis=1), fx - fb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.extras["expected_value"], fb, rtol=1e-5, atol=1e-6)
    assert result.extras["additivity_error"].max() < 1e-12
    found = metrics.completeness(result)
    assert found.source == "additivity_error" and found.relative.max() < 1e-6


def test_exported_equals_in_process_bit_for_bit(cnn):
    """Options baked into the export (cell, seed, n_samples, background rows) give what
    explain gives with them; the exported background input takes other rows too."""
    rng = np.random.default_rng(6)
    background = rng.random((2, 1, 8, 8)).astype(np.float32)
    options = {"n_samples": 6, "cell": 2, "seed": 9, "baseline": background}
    exported = export_explainer(cnn.explainer.model, METHOD, **options)
    feeds = {cnn.input: cnn.x}
    got = _run(exported, {**feeds, "target": cnn.targets})
    expected = cnn.explain(**options)
    np.testing.assert_array_equal(got["attribution/image"], expected[cnn.input])
    for extra, output in [("values", "shap_values"), ("expected_value", "expected_value"),
                          ("additivity_error", "additivity_error")]:
        np.testing.assert_array_equal(got[output], expected.extras[extra])
    np.testing.assert_array_equal(got["target_used"], cnn.targets)
    other = rng.random((2, 1, 8, 8)).astype(np.float32)  # as many rows as baked in
    fed = _run(exported, {**feeds, "target": cnn.targets, "background/image": other})
    again = cnn.explain(**{**options, "baseline": other})
    np.testing.assert_array_equal(fed["attribution/image"], again[cnn.input])


def test_batch_equals_rows_one_by_one(cnn):
    batch = cnn.explain(n_samples=4, cell=2)
    for row, target in enumerate(cnn.targets):
        alone = cnn.explainer.explain({cnn.input: cnn.x[row:row + 1]}, method=METHOD,
                                      target=int(target), n_samples=4, cell=2)
        np.testing.assert_allclose(alone[cnn.input][0], batch[cnn.input][row], rtol=1e-6,
                                   atol=1e-7 * float(np.abs(batch[cnn.input]).max()))


def test_superpixels_of_different_counts_run_one_program_each(cnn):
    """Rows whose superpixel counts differ run one program per count (their own
    permutations), back in row order, padded with NaN, each as the row alone."""
    pytest.importorskip("skimage")
    options = {"features": "superpixels", "n_segments": 12, "n_samples": 6}
    batch = cnn.explain(**options)
    counts = [int(mask.max()) + 1 for mask in batch.extras["feature_mask"]]
    assert len(set(counts)) > 1, counts  # the case under test
    for row, count in enumerate(counts):
        alone = cnn.explainer.explain({cnn.input: cnn.x[row:row + 1]}, method=METHOD,
                                      target=int(cnn.targets[row]), **options)
        np.testing.assert_allclose(batch.extras["values"][row, :count],
                                   alone.extras["values"][0], rtol=1e-6, atol=1e-9)
        assert np.isnan(batch.extras["values"][row, count:]).all()
        np.testing.assert_allclose(batch[cnn.input][row], alone[cnn.input][0], rtol=1e-6,
                                   atol=1e-9)


@pytest.mark.parametrize("width, samples", [(1, 3), (2, 9), (5, 1000), (9, 7), (64, 25),
                                            (65, 400), (3000, 2)])
def test_coalitions_counted_before_the_draw_bound_those_drawn(width, samples):
    bound = sum(min(samples, math.comb(width, j)) for j in range(width))
    assert most_coalitions(width, samples) == bound
    if width <= 65:
        drawn = plan(width, samples, 0)
        assert len(drawn.present) <= bound
        assert drawn.present[drawn.empty].sum() == 0
        # Every prefix of every permutation is among the coalitions scored.
        keys = {row.tobytes() for row in drawn.present}
        for order in drawn.order[:5]:
            prefix = np.zeros(width, bool)
            for f in order[:-1]:
                prefix[f] = True
                assert prefix.tobytes() in keys


def test_runs_over_max_runs_are_refused_in_one_line(mlp):
    """64 columns x 25 permutations: at most 1,576 coalitions, over max_runs=1000 in
    process and exported; 5 groups x 10,000 permutations are 31 coalitions only."""
    for run in (lambda: mlp.explain(n_samples=25, max_runs=1000),
                lambda: export_explainer(mlp.explainer.model, METHOD, max_runs=1000)):
        with pytest.raises(InputError, match="1,576 forward runs \\(at most\\)") as caught:
            run()
        assert "\n" not in str(caught.value)
    result = mlp.explain(features=column_groups(5), n_samples=10_000, max_runs=31)
    assert result.extras["coalitions"] == 31
    with pytest.raises(InputError, match="option 'n_samples' of method 'shapley_sampling'"):
        mlp.explain(n_samples=0)
