"""The written probe (onnxplain.probe.model) on the zoo's digits CNN, run in a plain ONNX
Runtime session: the original outputs are unchanged bit for bit, each reconstruction is the
decoder applied to the tapped layer (numpy oracle), the prediction on it is the original
model run on it, explain_probe reads the same numbers, and the metadata says which model the
probe belongs to. Decoders come from numpy ridge regression, independent of probe.fit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxplain import Explainer
from onnxplain.errors import InputError, ModelError
from onnxplain.graph.model import Model
from onnxplain.probe.decoders import init_decoder
from onnxplain.probe.explain import explain_probe
from onnxplain.probe.model import (
    METADATA_KEY,
    check_probe_of,
    load_probe,
    model_fingerprint,
    probe_model,
)
from tests.probe.ridge_decoders import Fitted, ridge_decoder

EARLY = "/features/features.1/Relu_output_0"
LATE = "/features/features.6/Relu_output_0"


@pytest.fixture(scope="module")
def built(digits_path, digits_split):
    x, _, _, _ = digits_split
    x = x[:600]
    acts = Explainer(str(digits_path), "cpu").forward(x, taps=[EARLY, LATE])
    decoders = [ridge_decoder(EARLY, "image", acts[EARLY], x),
                ridge_decoder(LATE, "image", acts[LATE], x),
                # Untrained weights: the emitted graph must be right whatever they are.
                init_decoder(LATE, "image", "conv", acts[LATE].shape[1:], x.shape[1:],
                             np.random.default_rng(0))]
    info = {"layers": {EARLY: {"ridge": np.float32(1e-2)}}}
    return probe_model(str(digits_path), Fitted(decoders, info)), decoders


def _run(proto: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def test_plain_runtime_runs_it_and_the_original_output_is_unchanged(built, digits_path,
                                                                    digits_split):
    proto, decoders = built
    _, _, x, _ = digits_split
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    outputs = _run(proto, {"image": x})
    original = _run(onnx.load(str(digits_path)), {"image": x})
    np.testing.assert_array_equal(outputs["logits"], original["logits"])
    assert list(outputs)[0] == "logits"
    for k in range(len(decoders)):
        for key in ("reconstruction", "error", "prediction"):
            assert f"probe/{k}/{key}" in outputs
        assert f"probe/{k}/tokens" not in outputs


def test_reconstruction_is_the_decoder_on_the_tapped_layer(built, digits_path, digits_split):
    proto, decoders = built
    _, _, x, _ = digits_split
    outputs = _run(proto, {"image": x})
    acts = Explainer(str(digits_path), "cpu").forward(x, taps=[EARLY, LATE])
    for k, decoder in enumerate(decoders[:2]):
        flat = acts[decoder.layer].reshape(len(x), -1)
        expected = (flat @ decoder.params["weight"] + decoder.params["bias"]).reshape(x.shape)
        got = outputs[f"probe/{k}/reconstruction"]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(outputs[f"probe/{k}/error"], (got - x) ** 2, rtol=1e-5,
                                   atol=1e-7)
    # The ridge decoders reconstruct held-out digits far better than their mean image does,
    # the early layer better than the late one.
    errors = [outputs[f"probe/{k}/error"].mean() for k in range(2)]
    assert errors[0] < errors[1] < ((x - x.mean(axis=0)) ** 2).mean()


def test_prediction_is_the_original_model_run_on_the_reconstruction(built, digits_path,
                                                                    digits_split):
    proto, decoders = built
    _, _, x, _ = digits_split
    outputs = _run(proto, {"image": x})
    original = onnx.load(str(digits_path))
    for k in range(len(decoders)):
        on_reconstruction = _run(original, {"image": outputs[f"probe/{k}/reconstruction"]})
        np.testing.assert_allclose(outputs[f"probe/{k}/prediction"],
                                   on_reconstruction["logits"], rtol=1e-5, atol=1e-5)
    # The copy of the graph shares the model's weights instead of duplicating them.
    names = [init.name for init in proto.graph.initializer]
    assert len(names) == len(set(names))
    assert sum(name.startswith("features.") or name.startswith("classifier.")
               for name in names) == len(original.graph.initializer)


def test_explain_probe_reads_what_plain_runtime_computes(built, digits_split, tmp_path):
    proto, decoders = built
    _, _, x, y = digits_split
    path = tmp_path / "probe.onnx"
    onnx.save(proto, str(path))
    found = explain_probe(str(path), x[:40], "cpu", labels=y[:40])
    expected = _run(proto, {"image": x[:40]})
    np.testing.assert_array_equal(found.output, expected["logits"])
    summary = found.summary()
    for k, layer in enumerate(found.layers):
        np.testing.assert_array_equal(layer.reconstruction,
                                      expected[f"probe/{k}/reconstruction"])
        classes = expected[f"probe/{k}/prediction"].argmax(1)
        np.testing.assert_array_equal(layer.predicted_class, classes)
        entry = summary["layers"][k]
        assert entry["layer"] == decoders[k].layer and entry["kind"] == decoders[k].kind
        assert entry["mean_error"] == pytest.approx(expected[f"probe/{k}/error"].mean(),
                                                    rel=1e-5)
        assert entry["agreement"] == pytest.approx(
            np.mean(classes == expected["logits"].argmax(1)))
        assert entry["accuracy"] == pytest.approx(np.mean(classes == y[:40]))
        assert summary["row_details"][3]["layers"][k]["predicted_class"] == classes[3]
    assert set(found.arrays()) == {"logits", *(f"probe/{k}/{key}" for k in range(3)
                                                for key in ("reconstruction", "error",
                                                            "prediction"))}


def test_picture_puts_input_reconstructions_and_errors_side_by_side(built, digits_split):
    proto, decoders = built
    _, _, x, _ = digits_split
    found = explain_probe(proto, x[:2], "cpu")
    picture = found.picture(1)
    # Captions, then input + 3 reconstructions above, 3 error maps below, the colour bar on
    # the right.
    from onnxplain.probe.explain import GAP, caption_height
    from onnxplain.viz.heatmap import COLOUR_BAR_WIDTH

    band = caption_height()
    tile = (picture.height - band - GAP) // 2
    assert picture.width == 4 * tile + 3 * GAP + COLOUR_BAR_WIDTH
    pixels = np.asarray(picture.convert("L"), dtype=float)
    assert all(pixels[:band, column * (tile + GAP):column * (tile + GAP) + tile].min() < 128
               for column in range(4))  # each column's caption
    # The first tile is the input in grey: its brightest pixel is where the digit is.
    first = pixels[band:band + tile, :tile]
    factor = tile // 8
    digit = x[1, 0]
    assert first[::factor, ::factor].argmax() == digit.argmax()
    assert pixels[band + tile + GAP:, :tile].min() == 255  # no error map under the input


def test_metadata_names_the_layers_and_the_model(built, digits_path, tmp_path):
    proto, decoders = built
    loaded = load_probe(proto)
    assert [(layer.layer, layer.kind) for layer in loaded.layers] == \
        [(d.layer, d.kind) for d in decoders]
    assert loaded.output == "logits"
    assert loaded.info == {"layers": {EARLY: {"ridge": pytest.approx(1e-2)}}}
    model = Model.load(str(digits_path))
    assert loaded.fingerprint == model_fingerprint(model) == \
        model_fingerprint(Model.load(str(digits_path)))
    check_probe_of(loaded, model)
    changed = onnx.load(str(digits_path))
    changed.graph.initializer[0].raw_data = bytes(len(changed.graph.initializer[0].raw_data))
    with pytest.raises(InputError, match="fitted on another model"):
        check_probe_of(loaded, Model.load(changed))
    with pytest.raises(InputError, match="not a probe file"):
        load_probe(str(digits_path))
    with pytest.raises(ModelError, match="already has probe outputs"):
        probe_model(proto, Fitted(decoders))
    broken = onnx.ModelProto()
    broken.CopyFrom(proto)
    next(p for p in broken.metadata_props if p.key == METADATA_KEY).value = "{"
    with pytest.raises(InputError, match="damaged"):
        load_probe(broken)
