""""auto" over token ids, settled in process where the inputs decide it (methods._tokens.
settled_auto_row): the class token on a bidirectional model, each row's last real token on
a causal one, the in-graph rule (export.attention.AUTO_ROW) where they do not: a
bidirectional model's row whose one real token is not token 0, a causal model whose probed
first row has one real token. Oracle: the exported explainer, which decides every row in the
graph; in process equals it in every case."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from onnxplain import Explainer
from onnxplain.export.attention import AUTO_ROW
from onnxplain.export.attention_graph import LAST_REAL
from onnxplain.graph.attention import attention_layers
from onnxplain.methods._tokens import settled_auto_row

from .test_same_program_attention import _exported


def _feeds(zoo, name: str, case: str) -> dict[str, np.ndarray]:
    feeds = {k: v[:3].copy() for k, v in zoo.sample(name).items()}
    mask = feeds["attention_mask"]
    if case == "right padded":
        mask[1, -4:] = 0
    elif case == "one token, not first":  # left padded to its token 2
        mask[2] = 0
        mask[2, 2] = 1
    elif case == "probe row of one token":
        mask[0, 1:] = 0
    return feeds


@pytest.mark.parametrize("name, case, settled", [
    ("bert_small", "right padded", 0),
    ("bert_small", "one token, not first", AUTO_ROW),
    ("gpt2_tiny", "right padded", LAST_REAL),
    ("gpt2_tiny", "probe row of one token", AUTO_ROW),
])
def test_in_process_settles_what_the_graph_would_decide(zoo, name, case, settled):
    explainer = Explainer(str(zoo.model_path(name)), "cpu", progress=False)
    feeds = _feeds(zoo, name, case)
    layers = attention_layers(explainer.model, None)
    tokens = feeds["input_ids"].shape[1]
    assert settled_auto_row(explainer.engine, feeds, layers, tokens) == settled
    got = _exported(explainer, "rollout", feeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a causal row of one token reads nothing but itself
        expected = explainer.explain(feeds, method="rollout")
    np.testing.assert_array_equal(got["attribution/input_ids"],
                                  expected.attributions["input_ids"])
    rows = np.asarray(expected.extras["query"]).reshape(-1)
    np.testing.assert_array_equal(np.broadcast_to(rows, got["query_row"].shape),
                                  got["query_row"])
