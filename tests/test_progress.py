"""Long runs show a progress bar with an ETA on stderr: the gradient-path methods too, not
only the perturbation methods; -q and --json keep stderr free of it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxplain
from onnxplain.runtime import progress

from .tiny_models import mlp

X = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)


@pytest.fixture()
def immediate(monkeypatch):
    """Bars show from the first step (they wait a second by default)."""
    monkeypatch.setattr(progress, "PROGRESS_AFTER_S", 0.0)


@pytest.mark.parametrize("method, options, label, total", [
    ("integrated_gradients", {"n_steps": 8, "internal_batch_size": 1}, "integrated gradients",
     8),
    ("smoothgrad", {"n_samples": 6}, "smoothgrad", 6),
    ("deeplift", {}, "deeplift", 4),
    ("occlusion", {"window": 2}, "occlusion", 12),
])
def test_methods_show_a_bar_with_an_eta(immediate, capfd, method, options, label, total):
    explainer = onnxplain.Explainer(mlp(), "cpu", memory_budget_mb=0.001)
    explainer.explain(X, method, target=1, **options)
    err = capfd.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(label)]
    assert lines, err
    if total is not None:
        assert any(f"/{total} " in line for line in lines)
    assert any("<" in line for line in lines)  # tqdm's elapsed<remaining


def test_no_bar_when_progress_is_off(immediate, capfd):
    onnxplain.Explainer(mlp(), "cpu", progress=False).explain(X, "integrated_gradients",
                                                              n_steps=8)
    assert capfd.readouterr().err == ""


def test_cli_json_keeps_stderr_free(immediate, tmp_path):
    from .cli_helpers import run

    onnx.save(mlp(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", X)
    result = run("explain", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npy"),
                 "-m", "integrated_gradients", "-O", "n_steps=8", "-o", str(tmp_path / "o"),
                 "--json")
    assert result.exit_code == 0 and "%|" not in result.stderr


def test_export_check_shows_a_bar(immediate, tmp_path):
    from .cli_helpers import run

    onnx.save(mlp(), tmp_path / "m.onnx")
    result = run("export", str(tmp_path / "m.onnx"), "-m", "integrated_gradients",
                 "-o", str(tmp_path / "e.onnx"), "--check")
    assert result.exit_code == 0, result.stderr
    assert "export --check:" in result.stderr and "/2 [" in result.stderr


def test_report_shows_the_methods_bars(immediate, tmp_path, zoo):
    from .cli_helpers import run

    np.save(tmp_path / "x.npy", zoo.sample("rgb_cnn")["image"][:1])
    result = run("report", str(zoo.model_path("rgb_cnn")), "-i", str(tmp_path / "x.npy"),
                 "--methods", "integrated_gradients,smoothgrad", "-o", str(tmp_path / "r"),
                 "--no-scores")
    assert result.exit_code == 0, result.stderr
    assert "integrated gradients" in result.stderr and "smoothgrad" in result.stderr


def test_perturbation_bar_advances_per_row_chunk(immediate, capfd, monkeypatch):
    """The perturbation Loop runs every copy of its rows in one program run: a long run goes
    in row chunks (methods._perturb), so the bar moves before the end."""
    import contextlib

    from onnxplain.methods import _perturb

    steps: list[int] = []
    real = _perturb.progress_bar

    @contextlib.contextmanager
    def spied(*args, **kwargs):
        with real(*args, **kwargs) as bar:
            update = bar.update

            def counted(n: int) -> None:
                steps.append(n)
                update(n)

            bar.update = counted
            yield bar

    monkeypatch.setattr(_perturb, "progress_bar", spied)
    explainer = onnxplain.Explainer(mlp(), "cpu")
    explainer.explain(X, "occlusion", target=1, window=1, batch_size=1)  # 6 runs a row
    assert len(steps) > 1 and sum(steps) == len(X) * 6, steps
    assert "/24 [" in capfd.readouterr().err
