"""Training decoders: never ending worse than the start, warning when it did not improve or
is still improving (short runs too), padding left out of the loss as the closed form leaves
it out, and errors no better than the mean flagged. Oracles: numpy losses on the zoo's
digits CNN and sentiment BERT run by ONNX Runtime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from onnxplain import Explainer
from onnxplain.methods._common import ConvergenceWarning
from onnxplain.probe.data import tap
from onnxplain.probe.fit import ProbeWarning, fit_probe, split_rows
from onnxplain.probe.training import reconstruct

POOL = "/features/features.4/MaxPool_output_0"
RIDGE = 1e-3


def _fit(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = fit_probe(*args, **kwargs)
    return fitted, [w for w in caught if w.category is not DeprecationWarning]


def test_training_that_ends_worse_keeps_its_closed_form_start(digits_path, digits_split):
    """Classifier-aware, weight 1, one epoch from the closed form: Adam's first steps leave
    the minimum (the loss measured 0.0088 -> 0.073); the start is kept, with a warning, and
    its loss is J(closed form) + CE of the model on its reconstructions, in numpy."""
    path, x = str(digits_path), digits_split[0][:200]
    fitted, caught = _fit(path, [POOL], x, decoder="linear", classifier_weight=1.0, epochs=1)
    info, decoder = fitted.info["layers"][POOL], fitted.decoders[0]
    assert info["kept"] == "start" and info["trained_loss"] > info["start_loss"]
    assert [str(w.message) for w in caught if w.category is ConvergenceWarning] == [
        f"layer '{POOL}': training the linear decoder ended at loss "
        f"{info['trained_loss']:.4g}, above its start's {info['start_loss']:.4g}, so the "
        "starting weights are kept: give a lower lr or more epochs"]
    closed = fit_probe(path, [POOL], x, decoder="linear").decoders[0]
    np.testing.assert_array_equal(decoder.params["weight"], closed.params["weight"])

    explainer = Explainer(path, progress=False)
    fit, _ = split_rows(200, 0.2, 0)
    a = explainer.forward(x[fit], taps=[POOL])[POOL].reshape(len(fit), -1).astype(np.float64)
    weight, bias = (closed.params[k].astype(np.float64) for k in ("weight", "bias"))
    x_hat = a @ weight + bias
    mse = ((x_hat - x[fit].reshape(len(fit), -1)) ** 2).mean() + RIDGE * (weight ** 2).sum()
    logits = explainer.forward(x_hat.reshape(-1, 1, 8, 8).astype(np.float32))["logits"]
    labels = explainer.forward(x[fit])["logits"].argmax(axis=1)
    logits = logits.astype(np.float64)
    top = logits.max(axis=1)
    log_sum = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    cross_entropy = (log_sum - logits[np.arange(len(fit)), labels]).mean()
    assert info["start_loss"] == pytest.approx(mse + cross_entropy, rel=1e-3)


def test_short_runs_still_learning_are_warned_of(digits_path, digits_split):
    """Three epochs of a conv decoder: its loss, from the start's, falls by far more than 1%
    of the pixels' variance; the warning counts the epochs it had."""
    x = digits_split[0][:200]
    fitted, caught = _fit(str(digits_path), [POOL], x, epochs=3, decoder="conv")
    info = fitted.info["layers"][POOL]
    assert info["kind"] == "conv" and info["kept"] == "trained"
    fit, _ = split_rows(200, 0.2, 0)
    drop = (info["start_loss"] - info["history"][-1]) / x[fit].var()
    assert drop > 0.01
    warned = [str(w.message) for w in caught if w.category is ConvergenceWarning]
    assert warned == [f"layer '{POOL}': the conv decoder's loss still fell by {drop:.3f} of "
                      "the target's variance over its last 3 epochs, so its errors are those "
                      "of a decoder not fully trained: give more epochs"]


@pytest.mark.filterwarnings("ignore::onnxplain.probe.fit.ProbeWarning")  # a random decoder
def test_the_training_loss_leaves_padding_out(zoo):
    """Per-position decoder trained on sentiment BERT's padded sentences: the loss over the
    fitting rows at the kept weights is the numpy mean of squared errors over the real
    positions only (plus the ridge term), not over every position."""
    from model_zoo.sentiment import encode, sentiment_data, vocabulary

    train, _ = sentiment_data()
    vocab = {token: i for i, token in enumerate(vocabulary())}
    ids, mask = encode([s for s, _ in train[:80]], vocab)
    inputs = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    path = str(zoo.model_path("sentiment_bert"))
    layer = "/model/bert/embeddings/LayerNorm/LayerNormalization_output_0"
    fitted = fit_probe(path, [layer], inputs, decoder="linear", linear_init="random",
                       epochs=1, lr=1e-6, holdout=0.0)
    info, decoder = fitted.info["layers"][layer], fitted.decoders[0]
    data = tap(path, [layer], inputs)
    x, x_hat = data.targets[decoder.target], reconstruct(decoder, data.activations[layer])
    squares = ((x_hat.astype(np.float64) - x) ** 2).mean(axis=-1)
    real = inputs["attention_mask"] == 1
    penalty = RIDGE * (decoder.params["weight"].astype(np.float64) ** 2).sum()
    loss = info["trained_loss"] if info["kept"] == "trained" else info["start_loss"]
    assert loss == pytest.approx(squares[real].mean() + penalty, rel=1e-4)
    assert not real.all()
    assert abs(squares.mean() - squares[real].mean()) > 1e-3 * squares[real].mean()
    assert info["train"]["token_accuracy"] >= 0  # scored over the same real positions
    assert info["train"]["real_positions"] == real.sum()


def test_errors_no_better_than_the_mean_are_flagged(digits_path, digits_split):
    """With a huge ridge the decoder is the fitting rows' mean image: on held-out rows its
    error is their variance plus the squared gap of the means, relative error >= 1."""
    x = digits_split[0][:100]
    fitted, caught = _fit(str(digits_path), [POOL], x, decoder="linear", ridge=1e6)
    info = fitted.info["layers"][POOL]
    held = info["held_out"]
    assert held["relative_mse"] >= 1 and held["no_better_than_mean"] is True
    assert info["train"]["no_better_than_mean"] is (info["train"]["relative_mse"] >= 1)
    warned = [str(w.message) for w in caught if w.category is ProbeWarning]
    assert warned == [f"layer '{POOL}': the linear decoder's relative error is "
                      f"{held['relative_mse']:.3f} (>= 1): its reconstructions are no better "
                      "than the mean input"]
    good = fit_probe(str(digits_path), [POOL], x, decoder="linear")
    assert good.info["layers"][POOL]["held_out"]["no_better_than_mean"] is False


def test_labels_as_indices_or_one_hot_rows(digits_path, digits_split):
    """One label check for the local head and probes (local.head.class_labels)."""
    x, y = digits_split[0][:100], digits_split[1][:100]
    given = [fit_probe(str(digits_path), [POOL], x, decoder="linear", labels=labels)
             for labels in (y, np.eye(10)[y])]
    held = [g.info["layers"][POOL]["held_out"] for g in given]
    assert held[0]["accuracy"] == held[1]["accuracy"]
    assert given[0].info["options"]["labels"] == "given"
