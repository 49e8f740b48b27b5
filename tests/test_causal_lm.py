"""The trained causal LM of the zoo (model_zoo/causal_lm.py), token-string targets and
`onnxplain generate`: the model has a known answer (the sound of the animal named earlier),
so its explanations have a ground truth; generation is checked against torch's greedy
decoding and every step against the single explain call on its prefix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.generation import generate
from onnxplain.vocab import load_vocabulary

from .cli_helpers import run

NAME = "causal_lm"


@pytest.fixture(scope="module")
def folder(zoo) -> Path:
    return zoo.build(NAME)


@pytest.fixture(scope="module")
def explainer(folder) -> Explainer:
    return Explainer(folder / "model.onnx", progress=False)


@pytest.fixture(scope="module")
def held_out():
    """100 prompts from a seed neither training (0) nor the builder's check (1) used."""
    from model_zoo.causal_lm import encode, prompt_data, vocabulary

    data = prompt_data(100, seed=3)
    ids, mask = encode([prompt for prompt, _, _ in data], {t: i for i, t in enumerate(
        vocabulary())})
    return data, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


def ids_of(words: list[str]) -> np.ndarray:
    from model_zoo.causal_lm import vocabulary

    table = {token: i for i, token in enumerate(vocabulary())}
    return np.array([table[w] for w in words])


def test_next_token_accuracy_on_held_out_prompts(explainer, held_out):
    # Chance is 1/8 (eight sounds); the builder refuses a model below 98% on another seed,
    # so 95% here leaves room for a few hard prompts and still fails an untrained model.
    data, feeds = held_out
    result = explainer.explain(feeds, method="saliency")
    answers = ids_of([answer for _, answer, _ in data])
    accuracy = float(np.mean(result.predicted == answers))
    print(f"next-token accuracy on 100 held-out prompts: {accuracy:.2%}")
    assert accuracy >= 0.95
    assert np.array_equal(result.target, result.predicted)  # the prediction is explained


def top_earlier_token(scores: np.ndarray, mask: np.ndarray, absolute: bool) -> np.ndarray:
    """Per row, the position of the largest score before the explained (last real) one: the
    explained position holds the query itself and is left out."""
    earlier = mask.copy()
    earlier[np.arange(len(mask)), mask.sum(1) - 1] = 0
    values = np.abs(scores) if absolute else scores
    return np.where(earlier != 0, values, -np.inf).argmax(1)


@pytest.mark.parametrize(("method", "absolute", "threshold"), [
    # measured: 100% of 200 prompts (seed 2); gradient norms are unsigned.
    ("saliency", True, 0.9),
    # measured: 86.5% of 200 prompts (seed 2) at 50 steps, 90% of these 100 at 32; the
    # rest put a distractor a little above the animal, as completeness spreads the logit
    # over every embedding, positions included.
    ("layer_integrated_gradients", False, 0.7),
])
def test_explanations_point_at_the_animal(explainer, held_out, method, absolute, threshold):
    # Ground truth: only the animal says anything about the sound; a sanity check of the
    # method on a model whose answer depends on one earlier word.
    data, feeds = held_out
    options = {"n_steps": 32} if method == "layer_integrated_gradients" else {}
    scores = explainer.explain(feeds, method=method, **options).attributions["input_ids"]
    top = top_earlier_token(scores, feeds["attention_mask"], absolute)
    found = feeds["input_ids"][np.arange(len(top)), top]
    share = float(np.mean(found == ids_of([animal for _, _, animal in data])))
    print(f"{method}: top earlier token is the animal in {share:.2%} of rows")
    assert share >= threshold


@pytest.fixture(scope="module")
def module(zoo):
    return zoo.load_torch(NAME)


def torch_greedy(module, prompt: np.ndarray, steps: int) -> list[int]:
    import torch

    ids = torch.tensor(prompt)[None]
    with torch.no_grad():
        for _ in range(steps):
            logits = module(ids, torch.ones_like(ids))
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


def torch_saliency(module, context: np.ndarray, token: int) -> np.ndarray:
    """|d logit / d word embedding| per token by torch autograd (saliency's token norm)."""
    import torch

    captured = {}

    def keep(_, __, output):
        output.retain_grad()
        captured["embedding"] = output

    handle = module.model.transformer.wte.register_forward_hook(keep)
    ids = torch.tensor(context)[None]
    try:
        module(ids, torch.ones_like(ids))[0, -1, token].backward()
    finally:
        handle.remove()
    return captured["embedding"].grad[0].norm(dim=-1).numpy()


@pytest.fixture(scope="module")
def generated(explainer):
    prompt = ids_of("in the garden bob met a duck and it said".split())
    return {method: generate(explainer, prompt, 3, method=method, n_steps=16)
            if method == "layer_integrated_gradients" else generate(explainer, prompt, 3,
                                                                    method=method)
            for method in ("saliency", "layer_integrated_gradients")}


def test_generated_tokens_equal_torch_greedy_decoding(module, generated):
    for generation in generated.values():
        assert generation.tokens.tolist() == torch_greedy(module, generation.prompt, 3)
    assert generated["saliency"].tokens[0] == ids_of(["quack"])[0]


def test_generation_saliency_equals_torch_autograd(module, generated):
    generation = generated["saliency"]
    for index, step in enumerate(generation.steps):
        expected = torch_saliency(module, generation.context(index), step.token)
        np.testing.assert_allclose(step.scores, expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("method", ["saliency", "layer_integrated_gradients"])
def test_each_step_equals_the_single_call_and_the_padded_batch(explainer, generated, method):
    generation = generated[method]
    options = {"n_steps": 16} if method == "layer_integrated_gradients" else {}
    contexts = [generation.context(i) for i in range(len(generation.steps))]
    width = len(contexts[-1])
    ids = np.zeros((len(contexts), width), np.int64)
    mask = np.zeros_like(ids)
    for row, context in enumerate(contexts):
        ids[row, :len(context)], mask[row, :len(context)] = context, 1
        single = explainer.explain({"input_ids": context[None], "attention_mask":
                                    np.ones_like(context)[None]}, method=method, **options)
        np.testing.assert_array_equal(single.attributions["input_ids"][0],
                                      generation.steps[row].scores)
    batch = explainer.explain({"input_ids": ids, "attention_mask": mask}, method=method,
                              **options)
    for row, step in enumerate(generation.steps):
        got = batch.attributions["input_ids"][row, :len(contexts[row])]
        np.testing.assert_allclose(got, step.scores, rtol=1e-4,
                                   atol=1e-5 * np.abs(step.scores).max())
    assert batch.target.tolist() == generation.tokens.tolist()


def test_generation_refuses_bad_input(explainer, zoo):
    prompt = ids_of(["a", "cat"])
    for steps in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="steps must be"):
            generate(explainer, prompt, steps)
    with pytest.raises(InputError, match="not next-token logits"):
        generate(Explainer(zoo.model_path("sentiment_bert"), progress=False), prompt, 1)
    with pytest.raises(InputError, match="one prompt"):
        generate(explainer, {"input_ids": np.stack([prompt, prompt]),
                             "attention_mask": np.ones((2, 2), np.int64)}, 1)


def test_a_context_longer_than_the_positions_stops_in_one_line(explainer):
    # The model learned 32 positions: the step that feeds a 33rd fails, naming itself.
    prompt = ids_of(("a cat said " * 10).split())
    with pytest.raises(InputError, match="generation stopped at step 4, on a context of 33 "
                                         "tokens"):
        generate(explainer, prompt, 4)


def test_a_prompt_without_its_mask_is_all_real_tokens(explainer):
    prompt = ids_of("a cat said".split())
    without = generate(explainer, {"input_ids": prompt[None]}, 1)
    assert without.tokens.tolist() == generate(explainer, prompt, 1).tokens.tolist()
    assert without.prompt.tolist() == prompt.tolist()


def test_padding_is_removed_from_the_prompt(explainer):
    prompt = ids_of("a cat sat by eve in the red park and it said".split())
    padded = {"input_ids": np.append(prompt, [0, 0])[None],
              "attention_mask": np.append(np.ones_like(prompt), [0, 0])[None]}
    generation = generate(explainer, padded, 1)
    assert generation.prompt.tolist() == prompt.tolist()
    assert generation.tokens.tolist() == ids_of(["meow"]).tolist()


def test_vocabulary_maps_tokens_to_ids(folder):
    vocabulary = load_vocabulary(folder / "vocab.txt")
    assert vocabulary.id_of("moo") == ids_of(["moo"])[0]
    assert vocabulary.encode_words(" a  cow ").tolist() == ids_of(["a", "cow"]).tolist()
    with pytest.raises(InputError, match="'zebra' is not in the vocabulary"):
        vocabulary.encode_words("a zebra")
    with pytest.raises(InputError, match="empty"):
        vocabulary.encode_words("  ")


def test_cli_explain_names_the_next_token(folder, tmp_path):
    out = tmp_path / "out"
    result = run("explain", str(folder / "model.onnx"), "-i", str(folder / "sample.npz"),
                 "--vocab", str(folder / "vocab.txt"), "--target", "woof", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "row 0: token 'woof' (id" in result.output
    assert "predicted token 'moo' (id" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_token"] == ["woof"] * 3
    assert summary["predicted_token"] == ["moo", "quack", "roar"]
    assert summary["rows"][1]["predicted_token"] == "quack"
    views = json.loads((out / "tokens.json").read_text())
    assert [row["predicted_token"] for row in views["next_tokens"]] == summary[
        "predicted_token"]
    assert views["next_tokens"][0]["position"] == 10
    assert [t["token"] for t in views["input_ids"][0]][-3:] == ["and", "it", "said"]
    page = (out / "tokens_input_ids_0.html").read_text()
    assert "next token &#x27;woof&#x27;" in page and '<span class="tok next">woof</span>' in page


def test_cli_token_target_is_refused_for_a_classifier_and_without_vocab(folder, zoo):
    bert = zoo.build("sentiment_bert")
    result = run("explain", str(bert / "model.onnx"), "-i", str(bert / "sample.npz"),
                 "--vocab", str(bert / "vocab.txt"), "--target", "good")
    assert result.exit_code == 2
    assert "names tokens, but output" in result.stderr
    result = run("explain", str(folder / "model.onnx"), "-i", str(folder / "sample.npz"),
                 "--target", "moo")
    assert result.exit_code == 2 and "needs --vocab" in result.stderr


def test_cli_generate_writes_steps_and_page(folder, tmp_path):
    out = tmp_path / "gen"
    result = run("generate", str(folder / "model.onnx"), "--text",
                 "alice saw a brown cow near the river and it said", "--vocab",
                 str(folder / "vocab.txt"), "-n", "2", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "generated: moo ." in result.output
    assert "strongest context token 'cow'" in result.output
    record = json.loads((out / "generation.json").read_text())
    assert record["generated"]["tokens"] == ["moo", "."]
    assert [len(step["attribution"]) for step in record["steps"]] == [11, 12]
    assert record["steps"][1]["context"][-1] == "moo"
    page = (out / "generation.html").read_text()
    assert page.count('<span class="tok next">moo</span>') == 2  # continuation and step 1


@pytest.mark.parametrize(("extra", "message"), [
    (["--text", "a cat", "-n", "0"], "steps must be"),
    (["--text", "a zebra"], "'zebra' is not in the vocabulary"),
    ([], "either --input FILE or --text"),
])
def test_cli_generate_errors_are_one_line(folder, tmp_path, extra, message):
    result = run("generate", str(folder / "model.onnx"), "--vocab", str(folder / "vocab.txt"),
                 "-o", str(tmp_path / "gen"), *extra)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_generate_refuses_a_classifier(zoo, tmp_path):
    bert = zoo.build("sentiment_bert")
    result = run("generate", str(bert / "model.onnx"), "--text", "good", "--vocab",
                 str(bert / "vocab.txt"), "-o", str(tmp_path / "gen"))
    assert result.exit_code == 2 and "not next-token logits" in result.stderr


@pytest.mark.parametrize("method", ["rollout", "transformer_attribution"])
def test_attention_methods_state_the_query_row_they_read(explainer, method):
    # -O query=P and --position P name one place: the row read is the explained position,
    # and a causal map read at row P holds nothing after P.
    ids = ids_of("a cat sat by eve in the red park and it said".split())[None]
    prompt = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    by_query = explainer.explain(prompt, method=method, query=4)
    by_position = explainer.explain(prompt, method=method, position=4)
    for result in (by_query, by_position):
        assert result.extras["query"] == 4
        assert result.extras["explained_positions"] == [4]
        assert "at position 4" in result.explained
        assert not np.any(result.attributions["input_ids"][0, 5:])
    np.testing.assert_array_equal(by_query.attributions["input_ids"],
                                  by_position.attributions["input_ids"])
    last = explainer.explain(prompt, method=method)
    assert last.extras["query"] == last.extras["explained_positions"][0] == ids.shape[1] - 1
    assert "last non-padding position" in last.explained
    with pytest.raises(InputError, match="name different rows"):
        explainer.explain(prompt, method=method, query=3, position=4)


def test_transformer_attribution_at_a_position_explains_its_logit(explainer):
    # The gradient-weighted maps are seeded at the row they read: the explained score is
    # the logit at position 4 (the same as saliency's at --position 4).
    ids = ids_of("a cat sat by eve in the red park and it said".split())[None]
    prompt = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    result = explainer.explain(prompt, method="transformer_attribution", query=4)
    saliency = explainer.explain(prompt, method="saliency", position=4)
    np.testing.assert_array_equal(result.target, saliency.target)
    np.testing.assert_allclose(result.target_score, saliency.target_score, rtol=1e-6)


def test_cli_attention_query_is_the_stated_position(folder, tmp_path):
    out = tmp_path / "out"
    result = run("explain", str(folder / "model.onnx"), "-i", str(folder / "sample.npz"),
                 "-m", "rollout", "-O", "query=4", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "next token at position 4" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert "at position 4" in summary["explained"]
    assert summary["extras"]["explained_positions"] == [4, 4, 4]
    assert summary["extras"]["query"] == 4
