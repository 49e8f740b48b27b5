"""Outputs scored per position (objective): [batch, positions, classes] sequences that are no
language model (a token tagger, a convolutional CTC recogniser) and [batch, classes, H, W]
segmentation maps explain the summed score of the predicted class at every (non-padding)
position or pixel, or at one position, one pixel or a box; a target names the class.

Oracles: the explained score recomputed in numpy from the forward output (argmax and the
attention mask read from the arrays, not from onnxplain); torch autograd (float64) of the
same sum on the zoo modules; occlusion's drops recomputed from forward runs of the occluded
inputs; exported explainers against the in-process methods; the clean forward run counted.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest

import onnxplain
from onnxplain.errors import InputError
from onnxplain.exporter import export_explainer

from .cli_helpers import run
from .conftest import require

MODELS = ("token_tagger_tiny", "ctc_conv_tiny", "segment_fcn_tiny")
# float32 ONNX Runtime against float64 torch, relative to each row's largest |gradient|:
# measured below 1e-6 on these models.
TOLERANCE = 1e-4
_EXPLAINERS: dict = {}


def _explainer(zoo, name: str) -> onnxplain.Explainer:
    if name not in _EXPLAINERS:
        _EXPLAINERS[name] = onnxplain.Explainer(zoo.model_path(name), "cpu", progress=False)
    return _EXPLAINERS[name]


def _weights(zoo, name: str, place: dict, target=None) -> np.ndarray:
    """The objective's weights, from numpy alone: 1 at [row, place, class] where class is the
    argmax of the forward output there (or `target`), padding (attention_mask 0) left out."""
    sample = zoo.sample(name)
    logits = _explainer(zoo, name).forward(sample)["logits"]
    spatial = logits.ndim == 4
    view = np.moveaxis(logits, 1, -1) if spatial else logits  # classes last
    chosen = view.argmax(axis=-1) if target is None else np.full(view.shape[:-1], target)
    where = np.ones(view.shape[:-1], dtype=bool)
    if "attention_mask" in sample:
        where &= sample["attention_mask"] != 0
    if "position" in place:
        where[:, np.arange(where.shape[1]) != place["position"]] = False
    if "pixel" in place:
        y, x = place["pixel"]
        keep = np.zeros_like(where)
        keep[:, y, x] = True
        where &= keep
    if "region" in place:
        (y0, y1), (x0, x1) = place["region"]
        keep = np.zeros_like(where)
        keep[:, y0:y1, x0:x1] = True
        where &= keep
    hot = (chosen[..., None] == np.arange(view.shape[-1])) & where[..., None]
    return (np.moveaxis(hot, -1, 1) if spatial else hot).astype(np.float64)


PLACES = [("token_tagger_tiny", {}), ("token_tagger_tiny", {"position": 4}),
          ("ctc_conv_tiny", {}), ("ctc_conv_tiny", {"position": 7}),
          ("segment_fcn_tiny", {}), ("segment_fcn_tiny", {"pixel": (5, 17)}),
          ("segment_fcn_tiny", {"region": ((2, 9), (10, 20))})]


def test_output_forms(zoo):
    from onnxplain.objective import output_form

    forms = [output_form(_explainer(zoo, name).model, "logits") for name in MODELS]
    assert forms == ["sequence", "sequence", "spatial"]


@pytest.mark.parametrize("name, place", PLACES)
def test_explained_score_is_the_numpy_sum(zoo, name, place):
    explainer = _explainer(zoo, name)
    logits = explainer.forward(zoo.sample(name))["logits"]
    for target in (None, 2):
        result = explainer.explain(zoo.sample(name), "saliency", target, abs=False, **place)
        weights = _weights(zoo, name, place, target)
        expected = (weights * logits).reshape(len(logits), -1).sum(axis=1)
        np.testing.assert_allclose(result.target_score, expected, rtol=1e-6)
        assert result.objective == ("spatial" if name.startswith("segment") else "sequence")
        assert (result.extras.get("explained_place") is not None) == bool(place)


def _torch_saliency(zoo, name: str, weights: np.ndarray) -> np.ndarray:
    """d sum(weights * logits) / d(input) in float64 torch; token models: d / d(embedding)."""
    torch = require("torch")
    module = zoo.load_torch(name).double()
    sample = {key: torch.from_numpy(value) for key, value in zoo.sample(name).items()}
    if name != "token_tagger_tiny":
        image = sample["image"].double().requires_grad_(True)
        (module(image) * torch.from_numpy(weights)).sum().backward()
        return image.grad.numpy()
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["embedded"] = output

    table = module.model.bert.embeddings.word_embeddings
    handle = table.register_forward_hook(keep)
    try:
        (module(*sample.values()) * torch.from_numpy(weights)).sum().backward()
    finally:
        handle.remove()
    return captured["embedded"].grad.numpy()


@pytest.mark.parametrize("name, place", PLACES)
def test_saliency_equals_torch_autograd_of_the_same_sum(zoo, name, place):
    result = _explainer(zoo, name).explain(zoo.sample(name), "saliency", abs=False, **place)
    ours = next(iter(result.tensors.values())) if name == "token_tagger_tiny" else result.first
    expected = _torch_saliency(zoo, name, _weights(zoo, name, place))
    scale = np.abs(expected).reshape(len(expected), -1).max(axis=1)
    error = np.abs(ours - expected).reshape(len(expected), -1).max(axis=1) / scale
    assert error.max() < TOLERANCE, error
    assert np.all(scale > 0)


def test_padding_positions_are_not_explained(zoo):
    """Row 1 of the tagger's sample is padded after position 6: the padded positions add
    nothing, so changing their ids changes no score (the mask hides them from attention)."""
    explainer = _explainer(zoo, "token_tagger_tiny")
    sample = zoo.sample("token_tagger_tiny")
    assert sample["attention_mask"][1, 6:].sum() == 0
    result = explainer.explain(sample, "saliency", abs=False)
    logits = explainer.forward(sample)["logits"]
    unmasked = logits[1, :6].max(axis=-1).sum()
    assert result.target_score[1] == pytest.approx(unmasked, rel=1e-6)
    assert logits[1, 6:].max(axis=-1).sum() != pytest.approx(0.0)  # the mask did matter


def test_occlusion_drops_equal_numpy_recomputation(zoo):
    """Perturbation methods score each occluded copy with the same objective: the classes
    chosen on the clean input, summed over the region."""
    name, place = "segment_fcn_tiny", {"region": ((2, 9), (10, 20))}
    explainer, sample = _explainer(zoo, name), zoo.sample(name)
    result = explainer.explain(sample, "occlusion", window=8, stride=8, **place)
    weights = _weights(zoo, name, place)
    image = sample["image"]

    def score(x):
        return (weights * explainer.forward({"image": x})["logits"]).reshape(len(x), -1).sum(1)

    clean = score(image)
    for y in range(0, 24, 8):
        for x in range(0, 24, 8):
            occluded = image.copy()
            occluded[:, :, y:y + 8, x:x + 8] = 0
            np.testing.assert_allclose(result.first[:, 0, y, x], clean - score(occluded),
                                       rtol=1e-4, atol=1e-5)


def test_rise_explains_the_same_scalar(zoo):
    """RISE's explained score per row is the objective's value on the clean input."""
    name = "ctc_conv_tiny"
    result = _explainer(zoo, name).explain(zoo.sample(name), "rise", n_masks=8, position=3)
    logits = _explainer(zoo, name).forward(zoo.sample(name))["logits"]
    np.testing.assert_allclose(result.target_score, logits[:, 3].max(axis=-1), rtol=1e-6)
    assert result.target.tolist() == logits[:, 3].argmax(axis=-1).tolist()


EXPORTED = [("ctc_conv_tiny", "saliency", {}), ("ctc_conv_tiny", "integrated_gradients",
                                                 {"position": 7}),
            ("segment_fcn_tiny", "saliency", {"region": ((2, 9), (10, 20))}),
            ("segment_fcn_tiny", "deeplift", {"pixel": (5, 17)}),
            ("token_tagger_tiny", "layer_integrated_gradients", {}),
            ("gpt2_tiny", "layer_integrated_gradients", {})]


@pytest.mark.parametrize("name, method, place", EXPORTED)
@pytest.mark.filterwarnings("ignore::onnxplain.methods.integrated_gradients.ConvergenceWarning")
def test_exported_explainer_equals_in_process(zoo, name, method, place):
    options = {"n_steps": 8} if "integrated" in method else {}
    explainer = onnxplain.Explainer(zoo.model_path(name), "cpu", progress=False)
    sample = zoo.sample(name)
    session = ort.InferenceSession(
        export_explainer(zoo.model_path(name), method, **place, **options).SerializeToString(),
        providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for target in (None, 1):
        feeds = dict(sample) if target is None else {
            **sample, "target": np.full(len(next(iter(sample.values()))), target, np.int64)}
        got = dict(zip(names, session.run(None, feeds), strict=True))
        want = explainer.explain(sample, method, target, **place, **options)
        key = next(k for k in got if k.startswith("attribution/"))
        expected = want[key.split("/", 1)[1]]
        np.testing.assert_allclose(got[key], expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max())


@pytest.mark.filterwarnings("ignore::onnxplain.methods.integrated_gradients.ConvergenceWarning")
def test_the_clean_forward_runs_once(zoo, monkeypatch):
    """A dense objective is resolved on the clean forward run, which the method reuses."""
    for name in ("ctc_conv_tiny", "gpt2_tiny"):
        explainer = onnxplain.Explainer(zoo.model_path(name), "cpu", progress=False)
        sample = zoo.sample(name)
        clean_runs = []
        forward = explainer.engine.forward

        def counted(feeds, *args, _forward=forward, _sample=sample, _runs=clean_runs,
                    **kwargs):
            if not args and not kwargs and all(
                    np.array_equal(feeds[k], v) for k, v in _sample.items()):
                _runs.append(1)
            return _forward(feeds, *args, **kwargs)

        monkeypatch.setattr(explainer.engine, "forward", counted)
        method = "integrated_gradients" if name == "ctc_conv_tiny" else "occlusion"
        explainer.explain(sample, method, **({"n_steps": 4} if name == "ctc_conv_tiny" else {}))
        assert len(clean_runs) == 1, name


def _next_token_logits(zoo, name: str, sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """(the last real position per row, the logits there), in numpy on a plain ONNX Runtime
    forward: padding is 0 in the attention mask, whose last columns are the new tokens."""
    session = ort.InferenceSession(str(zoo.model_path(name)), providers=["CPUExecutionProvider"])
    logits = session.run(None, sample)[0]
    length = sample["input_ids"].shape[1]
    real = sample["attention_mask"][:, -length:] != 0
    last = length - 1 - np.argmax(real[:, ::-1], axis=1)
    return last, logits[np.arange(len(last)), last]


@pytest.mark.parametrize("name", ["gpt2_tiny", "llama_tiny_kv"])
def test_gradient_methods_on_a_causal_lm_run_no_clean_forward(zoo, name, monkeypatch):
    """The next-token objective is computed inside the gradient program: no forward run
    resolves it first, and what is reported (explained position, predicted token, its
    logit) is read from that run's outputs. Oracle: numpy on a plain forward; saliency gets
    row 1 right-padded (attention methods need rows that end together)."""
    padded = {k: v.copy() for k, v in zoo.sample(name).items()}
    padded["attention_mask"][1, -1] = 0
    explainer = onnxplain.Explainer(zoo.model_path(name), "cpu", progress=False)
    forward, clean = explainer.engine.forward, []

    def counted(feeds, *args, **kwargs):
        clean.extend([1] if not args and not kwargs else [])
        return forward(feeds, *args, **kwargs)

    monkeypatch.setattr(explainer.engine, "forward", counted)
    for method, sample in (("saliency", padded), ("transformer_attribution", zoo.sample(name))):
        last, at = _next_token_logits(zoo, name, sample)
        result = explainer.explain(sample, method)
        assert result.extras["explained_positions"] == last.tolist(), method
        np.testing.assert_array_equal(result.predicted, at.argmax(axis=1))
        np.testing.assert_allclose(result.target_score, at.max(axis=1), rtol=1e-5)
    assert clean == [], f"{len(clean)} clean forward runs"


@pytest.mark.parametrize("name", ["ctc_conv_tiny", "segment_fcn_tiny"])
def test_saliency_on_sequences_and_maps_runs_no_clean_forward(zoo, name, monkeypatch):
    """The summed predicted-class objective of sequences and maps is computed inside the
    gradient program too. Oracle: the score summed in numpy from a plain forward."""
    explainer = onnxplain.Explainer(zoo.model_path(name), "cpu", progress=False)
    sample = zoo.sample(name)
    out = explainer.forward(sample)[explainer.output].astype(np.float64)
    axis = 1 if out.ndim == 4 else -1  # maps: classes on axis 1; sequences: the last
    want = out.max(axis=axis).reshape(len(out), -1).sum(axis=1)
    forward, clean = explainer.engine.forward, []
    monkeypatch.setattr(explainer.engine, "forward",
                        lambda feeds, *a, **k: clean.append(1) or forward(feeds, *a, **k))
    result = explainer.explain(sample, "saliency")
    assert clean == [], f"{len(clean)} clean forward runs"
    np.testing.assert_allclose(result.target_score, want, rtol=1e-5)


BAD = [("ctc_conv_tiny", ["--position", "12"], "position 12 is out of range"),
       ("ctc_conv_tiny", ["--pixel", "1,2"], "pixel needs a [batch, classes, height, width]"),
       ("segment_fcn_tiny", ["--position", "1"], "position needs a [batch, positions"),
       ("segment_fcn_tiny", ["--pixel", "24,0"], "pixel (y=24, x=0) is outside the 24x24"),
       ("segment_fcn_tiny", ["--pixel", "3"], "--pixel '3' is not Y,X"),
       ("segment_fcn_tiny", ["--region", "4:2,0:3"], "region y 4:2, x 0:3 is empty"),
       ("segment_fcn_tiny", ["--region", "1:3"], "--region '1:3' is not Y0:Y1,X0:X1"),
       ("segment_fcn_tiny", ["--pixel", "1,1", "--region", "0:2,0:2"],
        "one of position, pixel or region"),
       ("token_tagger_tiny", ["--position", "7"], "position 7 is padding in row 1"),
       ("token_tagger_tiny", ["--position", "2", "-m", "rollout"], "does not explain a score")]


@pytest.mark.parametrize("name, options, fragment", BAD)
def test_bad_places_are_one_line_exit_2(zoo, tmp_path, name, options, fragment):
    np.savez(tmp_path / "x.npz", **zoo.sample(name))
    result = run("explain", str(zoo.model_path(name)), "-i", str(tmp_path / "x.npz"), *options,
                 "-o", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr


def test_export_checks_the_place_against_static_axes(zoo):
    with pytest.raises(InputError, match="pixel \\(y=30, x=1\\) is outside the 24x24"):
        export_explainer(zoo.model_path("segment_fcn_tiny"), "saliency", pixel=(30, 1))
    with pytest.raises(InputError, match="position needs a \\[batch, positions"):
        export_explainer(zoo.model_path("segment_fcn_tiny"), "saliency", position=1)


def test_api_refuses_a_place_with_an_output_seed(zoo):
    explainer = _explainer(zoo, "ctc_conv_tiny")
    seed = np.ones((2, 12, 11), np.float32)
    with pytest.raises(InputError, match="output seed or a position"):
        explainer.explain(zoo.sample("ctc_conv_tiny"), output_seed=seed, position=1)
    with pytest.raises(InputError, match="position is an int"):
        explainer.explain(zoo.sample("ctc_conv_tiny"), position="3")


def test_cli_states_the_objective(zoo, tmp_path):
    name = "segment_fcn_tiny"
    np.savez(tmp_path / "x.npz", **zoo.sample(name))
    result = run("explain", str(zoo.model_path(name)), "-i", str(tmp_path / "x.npz"),
                 "--region", "2:9,10:20", "-t", "3", "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["objective"] == "spatial" and summary["target"] == [3, 3]
    assert "summed over the region y 2:9, x 10:20 of output 'logits'" in summary["explained"]
    assert summary["extras"]["explained_place"] == "summed over the region y 2:9, x 10:20"
    text = run("explain", str(zoo.model_path(name)), "-i", str(tmp_path / "x.npz"),
               "--pixel", "5,17", "-o", str(tmp_path / "out"))
    assert "explained: the score of the target class (default: the predicted one) at pixel " \
           "(y=5, x=17)" in text.stdout
    assert "row 0: class" in text.stdout and "predicted class" in text.stdout


def test_metrics_score_the_same_objective(zoo):
    """A deletion curve starts at the explained score: perturbed inputs are scored with the
    weights resolved on the clean run, not with a class index the output has no axis for."""
    from onnxplain.metrics.curves import deletion_curve

    name, place = "segment_fcn_tiny", {"region": ((2, 9), (10, 20))}
    explainer, sample = _explainer(zoo, name), zoo.sample(name)
    result = explainer.explain(sample, "saliency", **place)
    curve = deletion_curve(explainer, sample, result, steps=2)
    np.testing.assert_allclose(curve.scores[:, 0], result.target_score, rtol=1e-6)
    black = (_weights(zoo, name, place) * explainer.forward(
        {"image": np.zeros_like(sample["image"])})["logits"]).reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(curve.scores[:, -1], black, rtol=1e-5)


def test_attention_methods_state_that_they_read_no_score(zoo):
    result = _explainer(zoo, "token_tagger_tiny").explain(zoo.sample("token_tagger_tiny"),
                                                          "rollout")
    assert result.objective == "none" and "no score of output 'logits'" in result.explained


def _deletion_and_insertion(explainer, sample, name: str, values: np.ndarray,
                            weights: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion AUC per row recomputed in numpy from forward runs: the tokens of
    input `name` ranked by attribution (stable), the first floor(k F / K + 1/2) of them set to
    id 0 (deletion) or kept over a row of 0 ids (insertion), scored as sum(weights * logits)
    with the weights of the clean run."""
    ids = sample[name]
    count = ids.shape[1]
    done = np.floor(np.arange(steps + 1) * count / steps + 0.5).astype(int)
    aucs = []
    for insert in (False, True):
        scores = np.zeros((len(ids), steps + 1))
        for row in range(len(ids)):
            order = np.argsort(-values[row].astype(np.float64), kind="stable")
            for k, n in enumerate(done):
                moved = np.zeros(count, dtype=bool)
                moved[order[:n]] = True
                kept = moved if insert else ~moved
                copy = {key: value[row:row + 1].copy() for key, value in sample.items()}
                copy[name][0] = np.where(kept, ids[row], 0)
                logits = explainer.forward(copy)["logits"]
                scores[row, k] = float((weights[row:row + 1] * logits).sum())
        aucs.append(((scores[:, 1:] + scores[:, :-1]) / 2).sum(axis=1) / steps)
    return aucs[0], aucs[1]


def test_evaluate_scores_the_place_it_explains(zoo, tmp_path):
    """`evaluate --position P`: the method explains position P (as `explain --position P`)
    and every perturbed copy is scored at P with the classes chosen on the clean run."""
    name, steps = "token_tagger_tiny", 8
    explainer, sample = _explainer(zoo, name), zoo.sample(name)
    np.savez(tmp_path / "x.npz", **sample)
    result = run("evaluate", str(zoo.model_path(name)), "-i", str(tmp_path / "x.npz"),
                 "--position", "4", "--metrics", "deletion,insertion,completeness",
                 "--steps", str(steps), "--draws", "0", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    explained = explainer.explain(sample, "saliency", position=4)
    values = explained.attributions[scores["input"]]
    deletion, insertion = _deletion_and_insertion(
        explainer, sample, scores["input"], values, _weights(zoo, name, {"position": 4}), steps)
    assert scores["explained"] == explained.explained
    assert "at position 4" in scores["explained"]
    found = scores["metrics"]
    np.testing.assert_allclose(found["deletion"]["per_row"], deletion, rtol=1e-5)
    np.testing.assert_allclose(found["insertion"]["per_row"], insertion, rtol=1e-5)
    assert found["deletion"]["curve"][0] == pytest.approx(explained.target_score.mean(),
                                                          rel=1e-6)
    everywhere = explainer.explain(sample, "saliency")
    assert not np.allclose(everywhere.target_score, explained.target_score)  # place mattered


def test_report_explains_and_scores_the_place(zoo, tmp_path):
    """`report --pixel Y,X`: every method explains the pixel (the same score and sentence as
    `explain --pixel`) and the report's deletion AUC is evaluate's at that pixel."""
    name = "segment_fcn_tiny"
    np.savez(tmp_path / "x.npz", **zoo.sample(name))
    model, inputs = str(zoo.model_path(name)), str(tmp_path / "x.npz")
    alone = run("explain", model, "-i", inputs, "--pixel", "5,17", "-o", str(tmp_path / "e"),
                "--json")
    assert alone.exit_code == 0, alone.output
    expected = json.loads(alone.stdout)
    built = run("report", model, "-i", inputs, "--pixel", "5,17", "-m",
                "saliency,input_x_gradient", "-o", str(tmp_path / "r"), "--json")
    assert built.exit_code == 0, built.output
    methods = json.loads(built.stdout)["methods"]
    for method in ("saliency", "input_x_gradient"):
        summary = methods[method]["summary"]
        np.testing.assert_allclose(summary["target_score"], expected["target_score"],
                                   rtol=1e-6)
        assert summary["explained"] == expected["explained"]
        assert "at pixel (y=5, x=17)" in summary["explained"]
    scored = run("evaluate", model, "-i", inputs, "--pixel", "5,17", "--metrics",
                 "deletion,insertion", "--json")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.stdout)["metrics"]
    for label, metric in (("deletion AUC", "deletion"), ("insertion AUC", "insertion")):
        np.testing.assert_allclose(methods["saliency"]["scores"][label]["per_row"],
                                   metrics[metric]["per_row"], rtol=1e-6)


def test_report_states_a_place_the_method_cannot_read(zoo, tmp_path):
    name = "token_tagger_tiny"
    np.savez(tmp_path / "x.npz", **zoo.sample(name))
    built = run("report", str(zoo.model_path(name)), "-i", str(tmp_path / "x.npz"),
                "--position", "2", "-m", "saliency,rollout", "--no-scores",
                "-o", str(tmp_path / "r"), "--json")
    assert built.exit_code == 0, built.output
    methods = json.loads(built.stdout)["methods"]
    assert methods["saliency"]["summary"]["extras"]["explained_place"] == "at position 2"
    assert methods["rollout"]["status"] == "not_applicable"
    assert "does not explain a score" in methods["rollout"]["note"]


@pytest.mark.parametrize("command", ["report", "evaluate"])
def test_report_and_evaluate_refuse_bad_places_in_one_line(zoo, tmp_path, command):
    name = "segment_fcn_tiny"
    np.savez(tmp_path / "x.npz", **zoo.sample(name))
    extra = ["-o", str(tmp_path / "r")] if command == "report" else []
    for options, fragment in ((["--pixel", "24,0"], "pixel (y=24, x=0) is outside"),
                              (["--position", "1"], "position needs a [batch, positions")):
        result = run(command, str(zoo.model_path(name)), "-i", str(tmp_path / "x.npz"),
                     *options, *extra)
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr


def test_generate_is_part_of_the_package(zoo):
    """onnxplain.generate is the greedy explaining decoder: each token is the argmax of the
    model's last logits on the context before it (read from plain forward runs)."""
    explainer = onnxplain.Explainer(zoo.model_path("causal_lm"), "cpu", progress=False)
    sample = zoo.sample("causal_lm")
    ids = next(v for k, v in sample.items() if "mask" not in k)[0]
    mask = next((v for k, v in sample.items() if "mask" in k), np.ones((1, len(ids))))[0]
    generation = onnxplain.generate(explainer, {k: v[:1] for k, v in sample.items()}, 2)
    assert isinstance(generation, onnxplain.Generation)
    assert "generate" in onnxplain.__all__
    context = ids[mask != 0]
    for step in generation.steps:
        logits = explainer.forward({k: np.ones_like(context)[None] if "mask" in k
                                    else context[None] for k in sample})["logits"]
        assert step.token == int(logits[0, -1].argmax())
        assert step.score == pytest.approx(float(logits[0, -1].max()), rel=1e-6)
        context = np.append(context, step.token)


def test_first_token_of_a_causal_model_is_warned_with_its_reason(zoo):
    """Query 0 of a causal model attends only to itself (checked on the softmax maps the
    model computes): its map is 0 once its own entry is left out, and the warning says so."""
    from onnxplain.explainer import AttributionWarning

    explainer = onnxplain.Explainer(zoo.model_path("causal_lm"), "cpu", progress=False)
    sample = zoo.sample("causal_lm")
    maps = [v for k, v in explainer.forward(sample, taps=["Softmax"]).items()
            if k != "logits" and v.ndim == 4]
    assert maps and all(np.array_equal(m[:, :, 0, :], np.broadcast_to(
        np.arange(m.shape[-1]) == 0, m[:, :, 0, :].shape)) for m in maps)
    with pytest.warns(AttributionWarning, match="nothing beyond the explained query's own"):
        result = explainer.explain(sample, "rollout", query=0)
    assert not np.any(result.first)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttributionWarning)
        assert np.any(explainer.explain(sample, "rollout").first)


def _linear_sum(tmp_path, weights: list[float]) -> str:
    """y = sum_i w_i x_i per row: its gradient is w in every row."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["wx"]),
         helper.make_node("ReduceSum", ["wx", "axes"], ["y"], keepdims=0)], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", len(weights)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor("w", TensorProto.FLOAT, [len(weights)], weights),
         helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    path = str(tmp_path / f"linear_{len(set(weights))}.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_constant_map_is_warned(tmp_path):
    """Equal weights give every input the same gradient: a map that ranks nothing."""
    from onnxplain.explainer import AttributionWarning

    x = np.array([[1, 2, 3, 4], [4, 3, 2, 1]], np.float32)
    flat = onnxplain.Explainer(_linear_sum(tmp_path, [2.0] * 4), "cpu", progress=False)
    with pytest.warns(AttributionWarning, match=r"the same value \(2\) in rows 0, 1"):
        result = flat.explain(x, "saliency", abs=False)
    np.testing.assert_array_equal(result.first, np.full((2, 4), 2.0))
    ranked = onnxplain.Explainer(_linear_sum(tmp_path, [1.0, 2.0, 3.0, 4.0]), "cpu",
                                 progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttributionWarning)
        ranked.explain(x, "saliency", abs=False)


def test_randomisation_re_explains_the_same_place(zoo):
    """Randomising no weight at all (an identity randomiser) must give back the attribution
    itself: rank correlation 1 at the place, with the classes chosen on the clean run; an
    explanation summed over every pixel instead would not correlate perfectly."""
    from onnxplain.metrics.randomisation import parameter_randomisation

    name = "segment_fcn_tiny"
    explainer, sample = _explainer(zoo, name), zoo.sample(name)
    result = explainer.explain(sample, "saliency", pixel=(5, 17))
    found = parameter_randomisation(explainer, sample, result, layers=1,
                                    randomise=lambda layer, weights, rng: dict(weights))
    np.testing.assert_allclose(found.spearman, 1.0, rtol=1e-9)
    everywhere = explainer.explain(sample, "saliency")
    from onnxplain.metrics._common import spearman
    assert np.all(spearman(result.first, everywhere.first) < 0.99)
