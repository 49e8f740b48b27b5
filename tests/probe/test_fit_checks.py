"""Decoder probes refuse, with one-line InputErrors that say why and what to do, what they
would otherwise fit wrongly or run out of memory on: every check runs before any fitting.
Real zoo models under ONNX Runtime; two are re-declared (an NHWC input in front of the digits
CNN, the digits CNN at opset 9) with onnx's own helpers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxplain.errors import InputError
from onnxplain.probe.fit import fit_probe

POOL = "/features/features.4/MaxPool_output_0"


def _refused(match: str, *args, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as caught:
        fit_probe(*args, **kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("rows", [7, 12])
def test_time_major_layers_are_refused(zoo, rows):
    """A GRU's output [T, N, 2, H] with T = 7: taken as rows it would pair time steps with
    inputs (rows == T fitted silently before) or fail inside numpy (rows != T)."""
    path = str(zoo.model_path("gru_features_tiny"))
    features = np.random.default_rng(0).normal(size=(rows, 7, 5)).astype(np.float32)
    layer = "/gru/Transpose_1_output_0"
    message = _refused("first axis is not the batch", path, [layer], {"features": features},
                       decoder="linear")
    assert f"layer '{layer}' has shape [7, {rows}, 2, 6] for {rows} rows" in message
    # the batch-first tensor after it is probed
    fitted = fit_probe(path, ["/gru/Transpose_2_output_0"], {"features": features})
    assert fitted.decoders[0].layer_shape == (7, 12)


def test_flattened_decoders_to_tokens_are_refused(zoo):
    """The LSTM's last states [12] carry no token axis: a decoder to the embeddings [9, 8]
    would only fit 9-token inputs."""
    path = str(zoo.model_path("lstm_tokens_padded_tiny"))
    rng = np.random.default_rng(0)
    ids, lengths = rng.integers(1, 30, size=(20, 9)), rng.integers(2, 10, size=20)
    message = _refused("no axis of the 9 token positions", path, ["/Concat_output_0"],
                       {"input_ids": ids, "lengths": lengths})
    assert "[12]" in message and "decoded per position" in message


def test_the_input_or_the_target_named_as_the_layer(digits_path, digits_split, zoo):
    x = digits_split[0][:20]
    _refused("'image' is the model's input, not a layer", str(digits_path), ["image"], x)
    from model_zoo.sentiment import encode, vocabulary

    vocab = {token: i for i, token in enumerate(vocabulary())}
    ids, mask = encode(["the film was good", "not bad at all"] * 5, vocab)
    words = "/model/bert/embeddings/word_embeddings/Gather_output_0"
    _refused(f"layer '{words}' is what a decoder would reconstruct",
             str(zoo.model_path("sentiment_bert")), [words],
             {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})


def test_opset_9_trains_nothing_but_fits_the_closed_form(digits_path, digits_split,
                                                         tmp_path):
    """The digits CNN re-declared at opset 9 (its ops mean the same there): Resize and the
    training graph need opset 10, the closed form does not."""
    model = onnx.load(str(digits_path))
    model.opset_import[0].version = 9
    for node in model.graph.node:  # MaxPool-12's attributes, at their defaults here
        kept = [a for a in node.attribute if a.name not in ("ceil_mode", "dilations")]
        del node.attribute[:]
        node.attribute.extend(kept)
    path = str(tmp_path / "cnn_opset9.onnx")
    onnx.save(model, path)
    x = digits_split[0][:100]
    _refused("needs opset >= 10, but the model has opset 9", path, [POOL], x, decoder="conv")
    _refused("needs opset >= 10", path, [POOL], x, decoder="linear", classifier_weight=1.0)
    assert fit_probe(path, [POOL], x).decoders[0].kind == "linear"  # auto: no training
    fitted = fit_probe(path, [POOL], x, decoder="linear")
    reference = fit_probe(str(digits_path), [POOL], x, decoder="linear")
    np.testing.assert_allclose(fitted.decoders[0].params["weight"],
                               reference.decoders[0].params["weight"], atol=1e-6)
    assert fitted.info["layers"][POOL]["held_out"]["relative_mse"] == pytest.approx(
        reference.info["layers"][POOL]["held_out"]["relative_mse"], rel=1e-5)


def test_channels_last_images_get_the_linear_decoder(digits_path, digits_split, tmp_path):
    """The digits CNN behind a Transpose from NHWC [N, 8, 8, 1]: `auto` decodes it linearly
    (the conv decoder rebuilds channels-first images) and conv is refused; the linear
    decoder rebuilds the NHWC image as well as it rebuilds the NCHW one."""
    model = onnx.load(str(digits_path))
    model.graph.input.remove(model.graph.input[0])
    model.graph.input.insert(0, helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT,
                                                              ["batch", 8, 8, 1]))
    model.graph.node.insert(0, helper.make_node("Transpose", ["pixels"], ["image"],
                                                perm=[0, 3, 1, 2]))
    path = str(tmp_path / "nhwc.onnx")
    onnx.save(model, path)
    x = digits_split[0][:100]
    nhwc = fit_probe(path, [POOL], x.transpose(0, 2, 3, 1))
    info = nhwc.info["layers"][POOL]
    assert info["kind"] == "linear" and info["target_shape"] == [8, 8, 1]
    nchw = fit_probe(str(digits_path), [POOL], x, decoder="linear")
    assert info["held_out"]["relative_mse"] == pytest.approx(
        nchw.info["layers"][POOL]["held_out"]["relative_mse"], rel=1e-4)
    _refused(r"channels last \(NHWC\); use the linear decoder", path, [POOL],
             x.transpose(0, 2, 3, 1), decoder="conv")


def test_decoders_over_the_memory_budget_are_refused(zoo):
    """ResNet-18's first conv at 64x64 [64, 32, 32] to the image [3, 64, 64]: a linear
    decoder's weight would take 65536 x 12288 x 4 bytes = 3 GB (protobuf caps a model at
    2 GB); refused before any fitting, naming the layer and what to do instead."""
    path = str(zoo.model_path("resnet18_64"))
    layer = "/model/resnet/embedder/embedder/convolution/Conv_output_0"
    x = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    message = _refused("would weigh 3072 MB, over 512 MB", path, [layer], x,
                       decoder="linear")
    assert f"layer '{layer}'" in message and "use the conv decoder" in message


def test_the_closed_form_system_over_budget_is_refused(monkeypatch, digits_path,
                                                       digits_split):
    from onnxplain.probe import ridge

    x = digits_split[0][:100]
    needed = ridge.solve_bytes(80, 512, 64)
    monkeypatch.setattr(ridge, "SOLVE_BUDGET", needed - 1)
    _refused(f"layer '{POOL}' needs about", str(digits_path), [POOL], x, decoder="linear")
    monkeypatch.setattr(ridge, "SOLVE_BUDGET", needed)
    fit_probe(str(digits_path), [POOL], x, decoder="linear")


def test_decoders_that_would_not_fit_one_file_with_the_model_are_refused(monkeypatch,
                                                                         digits_path,
                                                                         digits_split):
    """Each layer within its budget, but together with the model's weights past what one
    ONNX file holds (2 GB; lowered here to the sum less one byte): refused before fitting.
    Under `auto` a conv layer counts at its linear decoder's size, which it may end with."""
    from onnxplain.graph.model import Model
    from onnxplain.graph.weights import payload_bytes
    from onnxplain.probe import fit

    x = digits_split[0][:100]
    early = "/features/features.1/Relu_output_0"
    model = payload_bytes(Model.load(str(digits_path)).proto)
    total = model + 4 * 64 * (16 * 64 + 32 * 16)  # [16,8,8] and [32,4,4] to 64 pixels
    monkeypatch.setattr(fit, "FILE_BUDGET", total - 1)
    _refused("pass the 2 GB one ONNX file holds", str(digits_path), [early, POOL], x)
    _refused("pass the 2 GB one ONNX file holds", str(digits_path), [early, POOL], x,
             decoder="linear")
    monkeypatch.setattr(fit, "FILE_BUDGET", total)
    fit_probe(str(digits_path), [early, POOL], x, decoder="linear")


def test_conv_from_fewer_than_2_by_2_positions_is_refused(zoo):
    """rgb_cnn's global average pool [32, 1, 1]: Resize would spread one value."""
    path = str(zoo.model_path("rgb_cnn"))
    x = np.random.default_rng(0).uniform(size=(20, 3, 32, 32)).astype(np.float32)
    _refused("has fewer than 2 x 2", path, ["/7/GlobalAveragePool_output_0"], x,
             decoder="conv")
