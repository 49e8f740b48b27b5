"""Decoder probes on the zoo's trained digits CNN (Schneider & Vlachos 2022): the deeper the
layer, the worse its conv decoder rebuilds the digit, and the classifier-aware variant
trades reconstruction error for reconstructions the model still classifies right.

Measured here (1797 digits, 20% held out, lr 3e-2, seed 0; relative error = held-out mean
squared error over the pixels' variance), at the default 100 epochs: conv1 0.003, conv2
0.014, pool 0.205, conv3 0.296; the model's accuracy on the reconstructions 1.000, 1.000,
0.986, 0.964 (on the inputs 1.000). The tests train 30 epochs, a third of the time: conv1
0.012, conv2 0.032, pool 0.287, conv3 0.423 (accuracy 1.000, 1.000, 0.967, 0.919), the two
deep decoders still learning, which fit_probe warns of. Classifier-aware at weight 0.1 (30
epochs): conv3 accuracy 0.919 -> 0.992 with relative error 0.423 -> 0.592; pool 0.967 ->
0.997 with 0.287 -> 0.441. The linear closed form beside each conv decoder
(info["linear_baseline"], the flattened layer to the 64 pixels): 0.022, 0.013, 0.051, 0.058;
on 8 x 8 digits it beats the small conv decoder from the pool on (at 100 epochs too).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from onnxplain.methods._common import ConvergenceWarning
from onnxplain.probe.fit import fit_probe

LAYERS = ["/features/features.1/Relu_output_0", "/features/features.3/Relu_output_0",
          "/features/features.4/MaxPool_output_0", "/features/features.6/Relu_output_0"]
DEEP = LAYERS[-1]
EPOCHS = 30  # the default's third: the ordering below holds already


@pytest.fixture(scope="module")
def digits(zoo):
    from model_zoo.digits import digits_data

    x_train, y_train, x_test, y_test = digits_data()
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])


@pytest.fixture(scope="module")
def plain_and_warnings(digits_path, digits):
    x, y = digits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = fit_probe(str(digits_path), LAYERS, x, labels=y, epochs=EPOCHS,
                           decoder="conv")
    return fitted, caught


@pytest.fixture(scope="module")
def plain(plain_and_warnings):
    return plain_and_warnings[0]


def test_decoders_still_learning_are_warned_of(plain_and_warnings):
    """At 30 epochs the two deep decoders' losses still fall by over 1% of the pixels'
    variance in the last 10 epochs (2.0% and 2.3%); the shallow ones have settled."""
    fitted, caught = plain_and_warnings
    warned = [str(w.message) for w in caught if w.category is ConvergenceWarning]
    assert [text.split("'")[1] for text in warned] == LAYERS[2:]
    assert all("give more epochs" in text for text in warned)


def test_reconstruction_error_grows_with_depth(plain):
    layers = plain.info["layers"]
    assert [layers[name]["kind"] for name in LAYERS] == ["conv"] * 4
    errors = [layers[name]["held_out"]["relative_mse"] for name in LAYERS]
    assert all(a < b for a, b in zip(errors, errors[1:], strict=False)), errors
    baselines = [layers[name]["linear_baseline"] for name in LAYERS]
    assert all(0 < b < 0.1 for b in baselines), baselines
    assert baselines[-1] < errors[-1] / 2  # the deep layers' conv decoders lag far behind
    assert errors[0] < 0.05 and errors[-1] > 0.2
    # fitted on other rows than measured: held-out error close to the training error
    for name in LAYERS:
        assert layers[name]["held_out"]["mse"] < 1.5 * layers[name]["train"]["mse"]


def test_model_accuracy_on_reconstructions_per_layer(plain):
    held = [plain.info["layers"][name]["held_out"] for name in LAYERS]
    own = held[0]["model_accuracy"]
    assert own > 0.97
    assert held[0]["accuracy"] >= own - 0.01  # the first layer keeps what the model needs
    assert held[-1]["accuracy"] < held[0]["accuracy"]  # the deepest decoder loses some
    assert held[-1]["accuracy"] > 0.5  # and still keeps the class for most digits


def test_classifier_aware_decoder_keeps_the_class_at_a_cost_in_error(plain, digits_path,
                                                                       digits):
    x, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        aware = fit_probe(str(digits_path), [DEEP], x, labels=y, classifier_weight=0.1,
                          epochs=EPOCHS, decoder="conv")
    before = plain.info["layers"][DEEP]["held_out"]
    after = aware.info["layers"][DEEP]["held_out"]
    assert aware.info["options"]["classifier_weight"] == 0.1
    assert after["accuracy"] >= before["accuracy"] + 0.02
    assert after["mse"] > before["mse"]


def test_classifier_aware_loss_is_mse_plus_the_models_cross_entropy(digits_path, digits):
    """The training graph's loss (the model's nodes copied onto the reconstruction) against
    numpy: the model run by ONNX Runtime on the reconstruction, cross-entropy of its logits."""
    from onnxplain import Explainer
    from onnxplain.probe.decoders import init_decoder
    from onnxplain.probe.training import (
        ACTIVATION,
        LABEL,
        LOSS,
        TARGET,
        Classifier,
        reconstruct,
        training_model,
    )
    from onnxplain.runtime.session import Session

    x, y = digits[0][:50], digits[1][:50]
    explainer = Explainer(str(digits_path), progress=False)
    a = explainer.forward(x, taps=[DEEP])[DEEP]
    decoder = init_decoder(DEEP, "image", "conv", a.shape[1:], x.shape[1:],
                           np.random.default_rng(1))
    decoder.params["weight1"] /= 5.0  # activations of this layer reach tens
    classifier = Classifier(explainer.model, "image", "logits", 0.7, y, {})
    model, names = training_model(decoder, classifier, opset=17)
    feeds = {ACTIVATION: a, TARGET: x, LABEL: y, "probe/ridge": np.array(1.0, np.float32)}
    feeds |= {names[k]: v for k, v in decoder.params.items()}
    loss = float(Session(model, ["CPUExecutionProvider"]).run([LOSS], feeds)[LOSS])

    x_hat = reconstruct(decoder, a, opset=17).astype(np.float64)
    logits = explainer.forward(x_hat.astype(np.float32))["logits"].astype(np.float64)
    top = logits.max(axis=1)
    log_sum = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    cross_entropy = (log_sum - logits[np.arange(50), y]).mean()
    expected = ((x_hat - x) ** 2).mean() + 0.7 * cross_entropy  # conv: no ridge term
    assert loss == pytest.approx(expected, rel=1e-4)
