"""`onnxplain methods` groups the methods by family and marks those that export; a misspelled
method gets the closest name."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxplain import METHODS
from onnxplain.errors import InputError
from onnxplain.export import EXPORTS
from onnxplain.exporter import export_explainer
from onnxplain.methods import get_method
from onnxplain_cli.main import FAMILIES

from .cli_helpers import run
from .tiny_models import mlp


def test_listing_is_grouped_by_family_with_export_marks():
    text = run("methods").stdout.splitlines()
    headings = [line for line in text if line and not line.startswith(" ")
                and not line.startswith("[export]")]
    assert headings == [FAMILIES[f] for f in FAMILIES
                        if any(m.family == f for m in METHODS.values())]
    for name, spec in METHODS.items():
        line = next(line for line in text if line.split()[:1] == [name])
        heading = next(h for h in reversed(text[:text.index(line)]) if h in headings)
        assert heading == FAMILIES[spec.family]
        assert line.endswith("[export]") == (name in EXPORTS)
    rows = json.loads(run("methods", "--json").stdout)
    assert {row["name"]: row["exportable"] for row in rows} == {
        name: name in EXPORTS for name in METHODS}
    assert [row["family"] for row in rows] == sorted(
        (row["family"] for row in rows), key=list(FAMILIES).index)


@pytest.mark.parametrize("typed, meant", [("integrated_gradient", "integrated_gradients"),
                                          ("Grad-CAM", "grad_cam"), ("smothgrad", "smoothgrad")])
def test_misspelled_method_gets_did_you_mean(typed, meant, tmp_path):
    with pytest.raises(InputError, match=f"did you mean '{meant}'"):
        get_method(typed)
    with pytest.raises(InputError, match=f"did you mean '{meant}'"):
        export_explainer(mlp(), typed)
    onnx.save(mlp(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 6), np.float32))
    result = run("explain", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npy"),
                 "-m", typed, "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and f"did you mean '{meant}'?" in result.stderr


def test_no_suggestion_for_a_name_far_from_every_method():
    with pytest.raises(InputError) as caught:
        get_method("magic")
    assert "did you mean" not in str(caught.value)
