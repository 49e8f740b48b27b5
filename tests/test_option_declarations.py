"""Method options are declared once (onnxplain.methods.options.Option) and checked in one
place: the API, `-O key=value` and export refuse a bad value in one line naming the method,
the option, what it expects and (briefly) what came; `onnxplain methods` and the README's
method table are generated from the same declarations."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import onnx
import pytest

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.export import EXPORTS
from onnxplain.exporter import export_explainer
from onnxplain.methods import METHODS, Option
from onnxplain.methods.export_options import export_options, exported_options
from onnxplain.methods.options import MAX_RUNS_OPTION
from onnxplain_cli import method_table

from .cli_helpers import run
from .tiny_models import mlp

# Values a hostile caller passes (the fuzzer's, and more): each is taken or refused in one line.
HOSTILE = (math.nan, math.inf, -math.inf, -1, 0, 1e308, 10**12, 10**400, -(10**400), "abc", "",
           "nan", "1e999", "-0", "[1, 2]", "8,8", "none", True, False, [1, 2], [1, [2]], None,
           (), {}, {"x": np.zeros(3)}, {"x": "a"}, 0.5, -0.0, np.float32("nan"), np.int64(3),
           np.zeros((2, 2)), np.zeros((300, 300)), np.array(["a"]), np.zeros(0), object(),
           np.array(5.0), np.array([np.inf]), b"bytes", 2**128)


def _declared():
    return [(name, option) for name, spec in METHODS.items() for option in spec.options]


@pytest.mark.parametrize("name, option", _declared(), ids=lambda v: getattr(v, "name", v))
def test_each_declaration_is_complete_and_its_default_passes_its_own_check(name, option):
    assert isinstance(option, Option)
    assert option.help and "\n" not in option.help and len(option.help) < 120
    assert option.check(name, option.default) == option.default or option.default is None


@pytest.mark.parametrize("name", sorted(METHODS))
def test_declared_options_are_the_keywords_of_the_method(name):
    """A declaration drifting from the function it configures (a renamed keyword) fails."""
    spec = METHODS[name]
    keywords = set(inspect.signature(inspect.unwrap(spec.run)).parameters)
    declared = [o.name for o in spec.options if o is not MAX_RUNS_OPTION or name == "occlusion"]
    assert len(declared) == len(set(declared))
    assert set(declared) <= keywords, set(declared) - keywords


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_export_reads_only_declared_options(name):
    reads, declared = EXPORTS[name].reads, METHODS[name].defaults if name in METHODS else {}
    assert reads is None or set(reads) <= set(declared)
    assert set(export_options(name)) <= set(declared)


def _one_line(error: InputError, method: str, key: str) -> None:
    text = str(error)
    assert "\n" not in text and len(text) < 400, text
    assert f"option '{key}' of method '{method}'" in text, text


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_hostile_value_is_taken_or_refused_in_one_line(name):
    spec = METHODS[name]
    for option in spec.options:
        for value in HOSTILE:
            try:
                spec.resolve_options({option.name: value})
            except InputError as error:
                _one_line(error, name, option.name)


@pytest.mark.parametrize("method, options, fragment", [
    ("integrated_gradients", {"n_steps": 0}, "must be an integer >= 1, got 0"),
    ("integrated_gradients", {"n_steps": 2.5}, "expects an int >= 1 or one of auto, got 2.5"),
    ("integrated_gradients", {"n_steps": True}, "expects an int >= 1 or one of auto, got True"),
    ("integrated_gradients", {"n_steps": np.zeros(10**6)}, "got a value of type ndarray shaped"),
    ("integrated_gradients", {"rule": "simpson"}, "expects one of riemann_left, .* 'simpson'"),
    ("integrated_gradients", {"baseline": "moon"}, "expects one of zeros, .*got 'moon'"),
    ("integrated_gradients", {"baseline": np.array([np.nan])}, "must hold finite numbers"),
    ("integrated_gradients", {"baseline_value": math.inf}, "must be a finite number, got inf"),
    ("integrated_gradients", {"baseline_value": 10**400}, "finite number, got an integer of"),
    ("integrated_gradients", {"seed": -1}, "must be an integer from 0 to 4294967295"),
    ("kernel_shap", {"seed": -1}, "must be an integer from 0 to 2\\*\\*128 - 1"),
    ("smoothgrad", {"noise_level": "nan"}, "must be a finite number, got 'nan'"),
    ("smoothgrad", {"noise_level": -0.1}, "must be a finite number >= 0, got -0.1"),
    ("smoothgrad", {"base": "smoothgrad"}, "expects one of deconvnet, .*got 'smoothgrad'"),
    ("rise", {"keep": 0.0}, "must be a finite number in \\(0, 1\\], got 0.0"),
    ("rise", {"keep": 1.5}, "in \\(0, 1\\], got 1.5"),
    ("rise", {"grid": [1, 2]}, "expects an int >= 1, got a value of type list of length 2"),
    ("rise", {"baseline": "dark"}, "expects a float or an array, got 'dark'"),
    ("rise", {"baseline": np.array(["a"])}, "expects a float or an array, got a value of type"),
    ("grad_cam", {"layer": 3}, "expects a tensor or node name or None, got 3"),
    ("grad_cam", {"relu": 2}, "expects a bool, got 2"),
    ("grad_cam", {"upsample": "cubic"}, "expects one of bilinear, nearest, none, got 'cubic'"),
    ("rollout", {"attention": [1, 2]}, "expects names separated by commas"),
    ("rollout", {"query": 1.5}, "expects one of auto, mean or an int, got 1.5"),
    ("occlusion", {"window": 0}, "expects one or two positive integers"),
    ("occlusion", {"window": "3,4,5"}, "got '3,4,5'"),
    ("occlusion", {"window": [True, 2]}, "expects one or two positive integers"),
    ("lime", {"kernel_width": 0}, "must be a finite number > 0, got 0"),
    ("lrp", {"composite": "plus"}, "expects one of epsilon-plus, .*got 'plus'"),
    ("lrp", {"low": "x" * 500}, "got 'xxxx.*\\.\\.\\.'$"),
    ("saliency", {"abs": "maybe"}, "expects a bool, got 'maybe'"),
])
def test_bad_values_name_the_method_the_option_and_what_it_expects(method, options, fragment):
    with pytest.raises(InputError, match=fragment) as caught:
        METHODS[method].resolve_options(options)
    _one_line(caught.value, method, next(iter(options)))


@pytest.mark.parametrize("method, given, want", [
    ("integrated_gradients", {"n_steps": "1e3"}, {"n_steps": 1000}),
    ("integrated_gradients", {"n_steps": 32.0}, {"n_steps": 32}),
    ("integrated_gradients", {"baseline": " Blur "}, {"baseline": "blur"}),
    ("integrated_gradients", {"baseline": "0.5"}, {"baseline": 0.5}),
    ("saliency", {"abs": "OFF"}, {"abs": False}),
    ("grad_cam", {"layer": "none", "upsample": "Nearest"}, {"layer": None, "upsample": "nearest"}),
    ("occlusion", {"window": "4x6", "stride": 2}, {"window": (4, 6), "stride": 2}),
    ("occlusion", {"window": [3]}, {"window": 3}),
    ("rollout", {"query": "-1", "start_layer": "-2"}, {"query": -1, "start_layer": -2}),
    ("rollout", {"query": "MEAN", "attention": ["a", "b"]},
     {"query": "mean", "attention": ["a", "b"]}),
    ("layer_integrated_gradients", {"baseline_token": None}, {"baseline_token": None}),
    ("rise", {"keep": 1, "seed": 2**128 - 1}, {"keep": 1.0, "seed": 2**128 - 1}),
])
def test_good_values_are_parsed_to_their_declared_kind(method, given, want):
    resolved = METHODS[method].resolve_options(given)
    for key, value in want.items():
        assert resolved[key] == value and type(resolved[key]) is type(value)


def test_unknown_option_suggests_the_close_one():
    with pytest.raises(InputError, match="has no option 'n_step': did you mean 'n_steps'"):
        METHODS["integrated_gradients"].resolve_options({"n_step": 3})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("options")
    onnx.save(mlp(), folder / "m.onnx")
    np.save(folder / "x.npy", np.ones((1, 6), np.float32))
    return folder


@pytest.mark.parametrize("option, fragment", [
    ("noise_level=inf", "option 'noise_level' of method 'smoothgrad' must be a finite number"),
    ("n_samples=0", "option 'n_samples' of method 'smoothgrad' must be an integer >= 1"),
    ("base=rise", "option 'base' of method 'smoothgrad' expects one of"),
])
def test_cli_and_api_give_the_same_one_line(files, option, fragment):
    result = run("explain", str(files / "m.onnx"), "-i", str(files / "x.npy"), "-m",
                 "smoothgrad", "-O", option, "-o", str(files / "out"), "-q")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr
    key, value = option.split("=")
    with pytest.raises(InputError, match=fragment):
        Explainer(str(files / "m.onnx"), progress=False).explain(
            np.ones((1, 6), np.float32), "smoothgrad", **{key: value})


def test_export_checks_the_same_declarations_and_the_same_work_budget(files):
    with pytest.raises(InputError, match="n_steps=1,000,000,000,000 takes .* max_runs=10,000"):
        exported_options("integrated_gradients", {"n_steps": 10**12})
    with pytest.raises(InputError, match="holds about .* over the memory budget"):
        exported_options("integrated_gradients", {"n_steps": 10**6, "max_runs": 10**7})
    with pytest.raises(InputError, match="'delta_tolerance' of method 'integrated_gradients' "
                                         "applies in-process only"):
        exported_options("integrated_gradients", {"delta_tolerance": 1.0})
    with pytest.raises(InputError, match="'noise_level' of method 'smoothgrad' must be a finite"):
        exported_options("smoothgrad", {"noise_level": math.nan})
    # 0 rows per run means "as the memory budget allows" in-process, 16 per loop iteration.
    assert exported_options("smoothgrad", {})["internal_batch_size"] == 16
    assert exported_options("layer_integrated_gradients", {})["baseline_token"] == -1
    result = run("export", str(files / "m.onnx"), "-m", "integrated_gradients", "-O",
                 "n_steps=1e12", "-o", str(files / "e.onnx"))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "max_runs" in result.stderr and not (files / "e.onnx").exists()


def test_export_metadata_records_the_resolved_options(files):
    exported = export_explainer(str(files / "m.onnx"), "smoothgrad", n_samples="3",
                                noise_level=0.5)
    props = {p.key: p.value for p in exported.metadata_props}
    assert json.loads(props["onnxplain.options"]) == {
        "base": "saliency", "noise_level": 0.5, "n_samples": 3, "seed": 0,
        "internal_batch_size": 16}


def test_methods_listing_comes_from_the_declarations():
    rows = {row["name"]: row for row in json.loads(run("methods", "--json").stdout)}
    for name, spec in METHODS.items():
        listed = rows[name]["options"]
        assert [o["name"] for o in listed] == [o.name for o in spec.options]
        assert [o["help"] for o in listed] == [o.help for o in spec.options]
        assert all(o["exported"] == (o["name"] in export_options(name)) for o in listed)
    text = run("methods").stdout
    assert "-O n_steps=50: points on the path" in text and "(an int >= 1)" in text


def test_readme_method_table_is_generated_from_the_declarations():
    readme = method_table.README.read_text(encoding="utf-8")
    assert method_table.replaced(readme, method_table.readme_table()) == readme, (
        "the README's method table is stale: run python -m onnxplain_cli.method_table")
    for spec in METHODS.values():
        assert f"| `{spec.name}` | {spec.family} |" in readme


@pytest.mark.parametrize("method", ["smoothgrad", "vargrad"])
def test_noise_tunnel_rows_per_run_leave_the_result_alone(method):
    """internal_batch_size (declared once, read in-process and exported) only chunks: one
    sample per run gives what all samples in one run give (the noise is drawn per row)."""
    explainer = Explainer(mlp(), progress=False)
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    whole = explainer.explain(x, method, n_samples=5)["x"]
    chunked = explainer.explain(x, method, n_samples=5, internal_batch_size=1)["x"]
    assert np.abs(whole).max() > 0
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-7)
