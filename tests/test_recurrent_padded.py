"""Padded recurrent classifiers (issue 17: padded recurrent): exports whose LSTM/GRU nodes read
`sequence_lens` from a `lengths` input, against torch with pack_padded_sequence on the same
weights (the oracle). The zoo samples pad with random tokens and noise, not zeros, so a model
or a gradient that read the padding would differ.

Tolerances: the ONNX side runs in float32, torch in float64; over at most 7 recurrent steps of
width 6 the float32 rounding measured <= 1.4e-7 of the largest entry (forward), <= 1.9e-7
(saliency) and <= 1.2e-7 (IG), so 1e-5 of the largest entry leaves 50x margin, while the
gradient of the model run over the padding (lengths ignored) is 0.69 (LSTM) and 0.94 (GRU)
off.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

import onnxplain
from onnxplain.describe import describe_model
from onnxplain.errors import AttributionWarning
from onnxplain.export.methods import path_points
from onnxplain.exporter import export_explainer
from onnxplain.graph.model import Model

from .conftest import require
from .test_recurrent_models import _relative

TOKENS, FEATURES = "lstm_tokens_padded_tiny", "gru_features_padded_tiny"
MODELS = {TOKENS: "input_ids", FEATURES: "features"}
TARGETS = {TOKENS: np.array([1, 2, 0]), FEATURES: np.array([3, 0, 2])}
_EXPLAINERS: dict[str, onnxplain.Explainer] = {}
_MODULES: dict[str, object] = {}


def _explainer(zoo, name: str) -> onnxplain.Explainer:
    if name not in _EXPLAINERS:
        _EXPLAINERS[name] = onnxplain.Explainer(zoo.model_path(name), providers="cpu",
                                                progress=False)
    return _EXPLAINERS[name]


def _explain(zoo, name: str, feeds: dict, method: str = "saliency", **options):
    """(result, AttributionWarnings raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _explainer(zoo, name).explain(feeds, method, target=TARGETS[name][:len(
            feeds["lengths"])], **options)
    return result, [w.message for w in caught if issubclass(w.category, AttributionWarning)]


def _full_map(name: str, result) -> np.ndarray:
    """The attribution where it was taken: the features, or the token embeddings."""
    key = MODELS[name]
    return result.tensors[result.sources[key]] if name == TOKENS else result.attributions[key]


def _torch_module(zoo, name: str):
    """The torch original in float64, loaded once."""
    if name not in _MODULES:
        _MODULES[name] = zoo.load_torch(name).double()
    return _MODULES[name]


def _point(zoo, name: str, feeds: dict) -> np.ndarray:
    """The attributed tensor in float64: the features, or the token embeddings."""
    torch = require("torch")
    if name == FEATURES:
        return feeds["features"].astype(np.float64)
    embed = _torch_module(zoo, name).embed
    return embed(torch.from_numpy(feeds["input_ids"])).detach().numpy()


def _packed_logits(zoo, name: str, leaf, lengths: np.ndarray):
    """The torch original run with pack_padded_sequence, from the attributed tensor."""
    torch = require("torch")
    from model_zoo.recurrent_padded import _final_states

    module = _torch_module(zoo, name)
    lengths = torch.from_numpy(lengths)
    if name == TOKENS:
        return module.head(_final_states(module.lstm, leaf, lengths))
    return module(leaf, lengths)


def _torch_gradient(zoo, name: str, point: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """d(sum_rows logit[row, target[row]]) / d(point), float64 autograd through the packed
    torch model."""
    torch = require("torch")
    leaf = torch.from_numpy(point).requires_grad_(True)
    logits = _packed_logits(zoo, name, leaf, lengths)
    targets = torch.from_numpy(TARGETS[name][:len(point)])
    logits[torch.arange(len(point)), targets].sum().backward()
    return leaf.grad.numpy()


@pytest.mark.parametrize("name", MODELS)
def test_onnx_outputs_equal_packed_torch(zoo, name):
    torch = require("torch")
    feeds = zoo.sample(name)
    assert len(set(feeds["lengths"])) == len(feeds["lengths"]) > 1
    (got,) = _explainer(zoo, name).forward(feeds).values()
    module = zoo.load_torch(name)
    tensors = [torch.from_numpy(feeds[key]) for key in (MODELS[name], "lengths")]
    with torch.no_grad():
        want = module(*tensors).numpy()
        unpacked = module(tensors[0]).numpy()
    assert _relative(got, want) < 1e-5
    assert _relative(unpacked, want) > 1e-2  # the padding matters: the oracle can fail


@pytest.mark.parametrize("name", MODELS)
def test_saliency_equals_packed_torch_autograd(zoo, name):
    feeds = zoo.sample(name)
    result, _ = _explain(zoo, name, feeds, abs=False)
    want = _torch_gradient(zoo, name, _point(zoo, name, feeds), feeds["lengths"])
    got = _full_map(name, result)
    assert got.shape == want.shape
    assert _relative(got, want) < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_equal_packed_torch(zoo, name):
    """IG from a zero baseline (layer IG at the embeddings for token ids) with the same
    Gauss-Legendre points as onnxplain, from torch's gradients; lengths stay fixed along
    the path."""
    feeds = zoo.sample(name)
    method = "layer_integrated_gradients" if name == TOKENS else "integrated_gradients"
    result, _ = _explain(zoo, name, feeds, method, n_steps=8)
    point = _point(zoo, name, feeds)
    alphas, weights = path_points(8, "gausslegendre")
    path = sum(w * _torch_gradient(zoo, name, a * point, feeds["lengths"])
               for a, w in zip(alphas, weights, strict=True))
    assert _relative(_full_map(name, result), point * path) < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_padded_batch_equals_rows_alone(zoo, name):
    """Each row explained alone, cut to its own length and unpadded, gives the batch's row."""
    feeds = zoo.sample(name)
    key = MODELS[name]
    batch, _ = _explain(zoo, name, feeds, abs=False)
    for row, length in enumerate(feeds["lengths"]):
        alone = {key: feeds[key][row:row + 1, :length], "lengths": feeds["lengths"][row:row + 1]}
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            single = _explainer(zoo, name).explain(alone, target=TARGETS[name][row:row + 1],
                                                   abs=False)
        want = _full_map(name, single)[0]
        np.testing.assert_allclose(_full_map(name, batch)[row, :length], want,
                                   rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
@pytest.mark.parametrize("name", MODELS)
def test_padded_steps_get_zero_and_no_warning(zoo, name, method):
    """Exactly 0 past each row's length (in the full map and the per-input scores), nonzero
    before it, and no AttributionWarning (no row is all zero)."""
    feeds = zoo.sample(name)
    if name == TOKENS and method == "integrated_gradients":
        method = "layer_integrated_gradients"
    options = {"n_steps": 8} if method != "saliency" else {}
    result, caught = _explain(zoo, name, feeds, method, **options)
    assert not caught, caught
    for values in (_full_map(name, result), result.attributions[MODELS[name]]):
        for row, length in enumerate(feeds["lengths"]):
            assert np.all(values[row, length:] == 0)
            steps = np.abs(values[row, :length]).reshape(length, -1).sum(1)
            assert np.all(steps > 0), (row, steps)


@pytest.mark.parametrize("name", MODELS)
def test_lengths_are_not_attributed(zoo, name):
    """The integer `lengths` input shares the symbolic batch axis, is fed unchanged and gets
    no attribution; the explained input alone does."""
    feeds = zoo.sample(name)
    result, _ = _explain(zoo, name, feeds)
    assert list(result.attributions) == [MODELS[name]]
    assert "lengths" not in result.sources
    assert result.attributions[MODELS[name]].shape == feeds[MODELS[name]].shape


@pytest.mark.parametrize("name", MODELS)
def test_inspect_does_not_say_the_recurrent_nodes_block_the_path(zoo, name):
    """The rules refuse weight gradients only: inspect lists the nodes for those, not as
    blocking the explained path (whose saliency the tests above check)."""
    listed = describe_model(Model.load(str(zoo.model_path(name))))["ops_without_backward_rule"]
    assert {item["op_type"] for item in listed} == {"LSTM" if name == TOKENS else "GRU"}
    assert not any(item["on_default_path"] for item in listed)


@pytest.mark.parametrize("name", MODELS)
def test_rise_runs_on_padded_batches(zoo, name):
    """RISE perturbs the explained input only (lengths repeated per copy); padded positions
    are masked like the others, and their scores carry only RISE's mask noise."""
    feeds = zoo.sample(name)
    result, _ = _explain(zoo, name, feeds, "rise", n_masks=16)
    scores = result.attributions[MODELS[name]]
    assert list(result.attributions) == [MODELS[name]]
    assert scores.shape == feeds[MODELS[name]].shape and np.all(np.isfinite(scores))
    for row, length in enumerate(feeds["lengths"]):
        assert np.any(scores[row, :length])


@pytest.mark.parametrize("name,method", [(FEATURES, "saliency"),
                                         (TOKENS, "layer_integrated_gradients")])
def test_exported_explainer_equals_in_process(zoo, name, method):
    """The exported model (a `lengths` input like the model's) run in ONNX Runtime gives the
    in-process attribution; token ids export layer IG (saliency needs a float input)."""
    feeds = zoo.sample(name)
    options = {"n_steps": 8} if method != "saliency" else {}
    proto = export_explainer(str(zoo.model_path(name)), method, **options)
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3  # the optional target's "initializer in inputs"
    session = ort.InferenceSession(proto.SerializeToString(), session_options,
                                   providers=["CPUExecutionProvider"])
    key = MODELS[name]
    (got,) = session.run([f"attribution/{key}"], {**feeds, "target": TARGETS[name]})
    want = _explain(zoo, name, feeds, method, **options)[0].attributions[key]
    assert np.all(got[np.arange(got.shape[1]) >= feeds["lengths"][:, None]] == 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
