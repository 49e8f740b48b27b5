"""The Ray engine with no Ray running: explain_dataset starts a local instance and stops it
when the run ends, also when the run fails; the CLI does the same in its own process. Apart
from test_ray_engine.py, whose module instance would otherwise be found and reused (and
named after it, so pytest runs it once that module's instance is down)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from onnxplain.dataset import explain_dataset
from onnxplain.errors import InputError

from ..conftest import require
from .conftest import digits_folder
from .test_explain_dataset import ROOT


@pytest.fixture
def ray():
    ray = require("ray")
    require("pyarrow")
    assert not ray.is_initialized(), "another test left Ray running"
    return ray


def test_a_run_starts_and_stops_its_own_instance_even_when_it_fails(zoo, ray, tmp_path):
    digits_folder(zoo, tmp_path / "data", 4)
    summary = explain_dataset(zoo.model_path("digits_cnn"), tmp_path / "data",
                              tmp_path / "out", engine="ray", workers=1, progress=False)
    assert summary["explained"] == 4 and summary["workers"] == 1
    assert not ray.is_initialized()
    digits_folder(zoo, tmp_path / "more", 2)
    (tmp_path / "out" / "summary.json").unlink()
    with pytest.raises(InputError, match="earlier run"):  # refused before Ray starts
        explain_dataset(zoo.model_path("digits_cnn"), tmp_path / "more", tmp_path / "out",
                        engine="ray", workers=1, progress=False)
    assert not ray.is_initialized()
    with pytest.raises(InputError, match="GPUs"):  # refused once Ray has started
        explain_dataset(zoo.model_path("digits_cnn"), tmp_path / "more", tmp_path / "new",
                        engine="ray", workers=1, gpus_per_worker=1, progress=False)
    assert not ray.is_initialized()


def test_the_cli_starts_and_stops_its_own_ray_instance(zoo, tmp_path):
    require("ray")
    digits_folder(zoo, tmp_path / "data", 6)
    result = subprocess.run(
        [sys.executable, "-m", "onnxplain_cli.main", "explain-dataset",
         str(zoo.model_path("digits_cnn")), "--data", str(tmp_path / "data"), "-o",
         str(tmp_path / "out"), "--engine", "ray", "--workers", "2", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["engine"] == "ray" and summary["explained"] == 6
    assert "Traceback" not in result.stderr
