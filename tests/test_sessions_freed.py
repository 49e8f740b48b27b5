"""An Explainer's engine, programs and ONNX Runtime sessions are freed as soon as the last
reference goes, without Python's cycle collector: a session left to the collector holds its
memory until a collection runs, and one collected in a forked child (a worker pool, a test
harness) waits forever on the parent's thread pool."""

from __future__ import annotations

import gc
import weakref

import pytest

from onnxplain import Explainer

CASES = [("digits_cnn", m) for m in ("saliency", "integrated_gradients", "smoothgrad",
                                     "occlusion", "rise", "kernel_shap", "lime", "grad_cam")]
CASES += [("bert_small", m) for m in ("layer_integrated_gradients", "rollout",
                                      "transformer_attribution", "attncat")]


@pytest.mark.parametrize("name, method", CASES)
def test_no_reference_cycle_keeps_the_engine(zoo, name, method):
    feeds = {k: v[:2] for k, v in zoo.sample(name).items()}
    gc.collect()
    gc.disable()
    try:
        explainer = Explainer(str(zoo.model_path(name)), "cpu", progress=False)
        explainer.explain(feeds, method=method, batch_size=1)  # a policy view too
        engine = weakref.ref(explainer.engine)
        del explainer
        assert engine() is None, "the engine outlived its Explainer (a reference cycle)"
    finally:
        gc.enable()
