"""`onnxplain evaluate`: the table and the JSON report every score beside its random
baseline; bad input is one `error:` line and exit code 2; the user's files stay as they
were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from ..cli_helpers import digests, run
from ..tiny_models import mlp


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    x = np.random.default_rng(3).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "mask.npy", np.array([0, 0, 1, 1, 2, 2]))
    (tmp_path / "notes.txt").write_text("not an array")
    return tmp_path




def test_table_prints_each_score_beside_its_random_baseline(workdir):
    before = digests(workdir)
    result = run("evaluate", str(workdir / "mlp.onnx"), "-i", str(workdir / "x.npy"),
                 "-m", "deeplift", "--provider", "cpu", "--steps", "6")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("deeplift on ") and "3 rows of 'x'" in lines[0]
    assert "features columns" in lines[0]
    for label in ("deletion AUC", "insertion AUC", "MoRF AOPC", "LeRF AOPC",
                  "completeness |error|", "randomisation Spearman"):
        row = next(line for line in lines if label in line)
        score, random = row[len("  ") + 44:].split()[:2]
        float(score), float(random)  # both printed as numbers
    layers = lines[lines.index("    per layer (randomised top first, cumulative):") + 1:]
    assert [line.split()[1:] for line in layers] == [["dense2", "(MatMul)"],
                                                     ["dense1", "(Gemm)"]]
    assert digests(workdir) == before  # evaluate writes nothing


def test_json_is_machine_readable(workdir):
    result = run("evaluate", str(workdir / "mlp.onnx"), "-i", str(workdir / "x.npy"),
                 "--provider", "cpu", "--json", "--metrics", "deletion,lerf,completeness",
                 "--features", "@" + str(workdir / "mask.npy"), "--steps", "3",
                 "--draws", "2", "--seed", "7", "-t", "2")
    assert result.exit_code == 0, result.stderr
    scores = json.loads(result.stdout)
    assert list(scores["metrics"]) == ["deletion", "lerf", "completeness"]
    assert scores["settings"]["features"] == "mask"
    assert scores["settings"]["random_draws"] == 2 and scores["settings"]["seed"] == 7
    deletion = scores["metrics"]["deletion"]
    assert len(deletion["per_row"]) == len(deletion["random_per_row"]) == 3
    assert len(deletion["curve"]) == 4 and deletion["fractions"] == [0, 1 / 3, 2 / 3, 1]
    assert scores["metrics"]["completeness"]["available"] is False  # saliency
    assert result.stderr.strip() == ""  # no progress bars under --json


def test_quiet_prints_nothing(workdir):
    result = run("evaluate", str(workdir / "mlp.onnx"), "-i", str(workdir / "x.npy"),
                 "--provider", "cpu", "-q", "--metrics", "insertion", "--draws", "0")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--metrics", "deletion,beauty"], "unknown metric 'beauty'"),
    (["--steps", "0"], "--steps"),
    (["--features", "blobs"], "unknown features 'blobs'"),
    (["--features", "pixels"], "needs image rows"),
    (["-O", "foo=1"], "has no option 'foo'"),
    (["-m", "nonsense"], "nonsense"),
    (["-t", "9"], "9"),
    (["--layers", "0"], "--layers"),
])
def test_bad_input_is_one_line_and_exit_2(workdir, args, message):
    before = digests(workdir)
    result = run("evaluate", str(workdir / "mlp.onnx"), "-i", str(workdir / "x.npy"),
                 "--provider", "cpu", *args)
    _one_error(result, message)
    assert digests(workdir) == before


def test_output_seed_is_explained_and_scored(workdir):
    from onnxplain import Explainer, metrics

    seed = np.random.default_rng(8).standard_normal((3, 4)).astype(np.float32)
    np.save(workdir / "seed.npy", seed)
    result = run("evaluate", str(workdir / "mlp.onnx"), "-i", str(workdir / "x.npy"),
                 "--provider", "cpu", "--json", "--metrics", "deletion,randomization",
                 "--steps", "3", "--output-seed", str(workdir / "seed.npy"))
    assert result.exit_code == 0, result.stderr
    explainer = Explainer(str(workdir / "mlp.onnx"), "cpu", progress=False)
    x = np.load(workdir / "x.npy")
    attribution = explainer.explain(x, output_seed=seed)
    expected = metrics.evaluate(explainer, x, attribution, ["deletion", "randomization"],
                                steps=3, output_seed=seed)
    assert json.loads(result.stdout) == json.loads(json.dumps(expected))
    classes = metrics.evaluate(explainer, x, explainer.explain(x), ["deletion"], steps=3)
    assert classes["metrics"]["deletion"]["per_row"] != expected["metrics"]["deletion"]["per_row"]
    both = run("evaluate", str(workdir / "mlp.onnx"), "-i", str(workdir / "x.npy"),
               "--output-seed", str(workdir / "seed.npy"), "-t", "1")
    _one_error(both, "give either target or output_seed, not both")


@pytest.mark.parametrize("model, data, message", [
    ("missing.onnx", "x.npy", "model file not found"),
    ("mlp.onnx", "missing.npy", "input file not found"),
    ("mlp.onnx", "notes.txt", "unsupported input file"),
])
def test_bad_files_are_one_line_and_exit_2(workdir, model, data, message):
    result = run("evaluate", str(workdir / model), "-i", str(workdir / data))
    _one_error(result, message)


def _one_error(result, message: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
