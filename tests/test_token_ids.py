"""Token ids past the embedding table they index are refused in one line naming the
input, the id, where it is and the table's rows, before ONNX Runtime runs anything."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain import Explainer
from onnxplain.errors import InputError

from .cli_helpers import run

TABLE = "model.bert.embeddings.word_embeddings.weight"


def _batch(zoo) -> dict[str, np.ndarray]:
    return {name: np.array(value) for name, value in zoo.sample("sentiment_bert").items()}


@pytest.mark.parametrize("bad", [69, 850, -70])
def test_an_id_past_the_table_is_one_line(zoo, bad):
    feeds = _batch(zoo)
    feeds["input_ids"][1, 3] = bad
    explainer = Explainer(str(zoo.model_path("sentiment_bert")), progress=False)
    message = (f"^input 'input_ids' holds {bad} at \\[1, 3\\], past the 69 rows of the table "
               f"'{TABLE}' it indexes \\(ids 0 .. 68\\)$")
    for method in ("saliency", "rollout"):
        with pytest.raises(InputError, match=message):
            explainer.explain(feeds, method)
    with pytest.raises(InputError, match=message):
        explainer.forward(feeds)


def test_ids_the_table_has_run(zoo):
    """The last row, and a negative id, which ONNX's Gather counts from the end."""
    feeds = _batch(zoo)
    explainer = Explainer(str(zoo.model_path("sentiment_bert")), progress=False)
    feeds["input_ids"][0, 1] = 68
    feeds["input_ids"][1, 1] = -1
    same = _batch(zoo)
    same["input_ids"][0, 1] = 68
    same["input_ids"][1, 1] = 68
    np.testing.assert_array_equal(explainer.forward(feeds)["logits"],
                                  explainer.forward(same)["logits"])


def test_the_cli_refuses_an_id_past_the_table_with_exit_2(zoo, tmp_path):
    feeds = _batch(zoo)
    feeds["input_ids"][0, 2] = 1000
    np.savez(tmp_path / "text.npz", **feeds)
    result = run("explain", str(zoo.model_path("sentiment_bert")), "-i",
                 str(tmp_path / "text.npz"), "-m", "saliency", "-q", "-o", str(tmp_path / "out"))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (f"error: input 'input_ids' holds 1000 at [0, 2], past the 69 rows of "
                        f"the table '{TABLE}' it indexes (ids 0 .. 68)"), lines[0]
    assert not (tmp_path / "out").exists()
