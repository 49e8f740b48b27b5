"""`onnxplain methods` groups the methods by family and marks those that export, then lists
the tests over sets of inputs (TCAV); a misspelled method gets the closest name."""

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
from onnxplain_cli.method_table import SET_TESTS_HEADING, readme_table

from .cli_helpers import run
from .tiny_models import mlp


def test_listing_is_grouped_by_family_with_export_marks():
    text = run("methods").stdout.splitlines()
    headings = [line for line in text if line and not line.startswith(" ")
                and not line.startswith("[export]")]
    assert headings == [FAMILIES[f] for f in FAMILIES
                        if any(m.family == f for m in METHODS.values())] + [SET_TESTS_HEADING]
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


def test_tcav_is_listed_after_the_methods_as_a_test_over_sets_of_inputs():
    """TCAV is no method (explain cannot run it), yet the listing and the README table show
    it in a section of its own with its paper, its function and a command line that the
    command accepts."""
    assert "tcav" not in METHODS
    lines = run("methods").stdout.splitlines()
    start = lines.index(SET_TESTS_HEADING)
    name, paper, api, cli = (line.strip() for line in lines[start + 1:start + 5])
    assert name.startswith("tcav ") and "concept" in name
    assert paper == ("paper: Kim, Wattenberg, Gilmer, Cai, Wexler, Viegas, Sayres 2018, "
                     "ICML, arXiv:1711.11279")
    assert api.startswith("API: onnxplain.tcav(model, inputs, concepts, random_sets, *, ")
    assert cli.startswith("CLI: onnxplain tcav MODEL ")
    usage = run("tcav", "--help")
    assert usage.exit_code == 0
    for flag in (word for word in cli.split() if word.startswith("-")):
        assert f" {flag}" in usage.stdout, flag
    table = readme_table()
    section = table[table.index(f"**{SET_TESTS_HEADING}**"):]
    assert table.index("| `saliency` |") < table.index(section)
    assert "| `tcav` |" in section and "arXiv:1711.11279" in section
    assert "`onnxplain tcav MODEL " in section and "`onnxplain.tcav(model, " in section


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
