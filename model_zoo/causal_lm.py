"""A tiny GPT-2 trained on generated sentences whose next word is decided by one earlier word,
so its next-token explanations have a ground truth.

Every prompt names one animal among distractors (a name, a colour, a place) and ends in "and
it said"; the next word is that animal's sound, wherever the animal stands:
"alice saw a brown cow near the river and it said" -> "moo". Word-level, lowercase, generated
from a seeded `random.Random`. The model is trained with the ordinary language-model loss on
every position (the answer's weighted up), so it also learns that "." follows the sound, and
greedy generation goes on "moo . ...".

An explanation of the answer should point at the animal: no other word of the prompt says
anything about the sound. Trains in about 4 s on one core.
"""

from __future__ import annotations

import random
from pathlib import Path

from .hf_models import export_text_model
from .optimized import _NoCache

SPECIAL_TOKENS = ("<pad>", "<unk>", ".")
PAD, UNK, STOP = range(3)
# The animal decides the answer; names, colours and places are distractors around it.
SOUNDS = {"cat": "meow", "dog": "woof", "cow": "moo", "duck": "quack", "sheep": "baa",
          "owl": "hoot", "frog": "croak", "lion": "roar"}
NAMES = ("alice", "bob", "carol", "dave", "eve", "frank")
COLOURS = ("red", "green", "blue", "brown", "white", "black")
PLACES = ("barn", "park", "garden", "forest", "house", "river")
TEMPLATES = ("{name} saw a {colour} {animal} near the {place} and it said",
             "in the {place} {name} met a {animal} and it said",
             "a {animal} sat by {name} in the {colour} {place} and it said",
             "the {colour} {animal} of {name} walked to the {place} and it said")
ANSWER_WEIGHT = 10.0
# Prompts in sample.npz (and the README/demo): the answer is the sound of the animal. Of one
# length, so that attention methods, which read one query row per run, take them together.
SAMPLE_PROMPTS = ("alice saw a brown cow near the river and it said",
                  "bob saw a white duck near the barn and it said",
                  "eve saw a green lion near the park and it said")


def vocabulary() -> list[str]:
    words = {word for template in TEMPLATES for word in template.split() if "{" not in word}
    return [*SPECIAL_TOKENS, *sorted(words), *NAMES, *COLOURS, *PLACES, *SOUNDS,
            *SOUNDS.values()]


def animal_prompt(rng: random.Random) -> tuple[str, str, str]:
    """One prompt, its answer (the sound of its animal) and the animal."""
    animal = rng.choice(sorted(SOUNDS))
    prompt = rng.choice(TEMPLATES).format(name=rng.choice(NAMES), colour=rng.choice(COLOURS),
                                          place=rng.choice(PLACES), animal=animal)
    return prompt, SOUNDS[animal], animal


def prompt_data(count: int, seed: int) -> list[tuple[str, str, str]]:
    """`count` (prompt, answer, animal) triples from a seeded generator."""
    rng = random.Random(seed)
    return [animal_prompt(rng) for _ in range(count)]


def encode(texts: list[str], vocab: dict[str, int]):
    """input_ids and attention_mask, int64 [N, S], right-padded with <pad>."""
    import torch

    rows = [[vocab.get(word, UNK) for word in text.split()] for text in texts]
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), PAD, dtype=torch.int64)
    mask = torch.zeros(len(rows), length, dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


def causal_lm_architecture():
    """GPT-2 with 2 layers of width 64 and 4 heads over the word vocabulary; returns the
    next-token logits of every position, [batch, sequence, vocabulary]."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=128,
                        vocab_size=len(vocabulary()), n_positions=32, bos_token_id=STOP,
                        eos_token_id=STOP, pad_token_id=PAD, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, attn_implementation="eager")
    return _NoCache(GPT2LMHeadModel(config))


def next_words(model, prompts: list[str]) -> list[str]:
    """The greedy next word after each prompt (at its last non-padding position)."""
    import torch

    words = vocabulary()
    ids, mask = encode(prompts, {token: i for i, token in enumerate(words)})
    with torch.no_grad():
        logits = model(ids, mask)[torch.arange(len(prompts)), mask.sum(1) - 1]
    return [words[i] for i in logits.argmax(-1).tolist()]


def answer_accuracy(model, data: list[tuple[str, str, str]]) -> float:
    """Share of prompts whose greedy next word is the answer."""
    predicted = next_words(model, [prompt for prompt, _, _ in data])
    return sum(p == a for p, (_, a, _) in zip(predicted, data, strict=True)) / len(data)


def train_causal_lm(steps: int = 150, batch_size: int = 32, lr: float = 5e-3):
    """Train on fresh texts (prompt + answer + "."), language-model loss on every real
    position, the answer's weighted up; returns the model in eval mode."""
    import torch

    vocab = {token: i for i, token in enumerate(vocabulary())}
    rng = random.Random(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights everywhere (see sentiment.train_sentiment)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = causal_lm_architecture()
            optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps)
            model.train()
            for _ in range(steps):
                data = [animal_prompt(rng) for _ in range(batch_size)]
                loss = _loss(model, data, vocab)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _loss(model, data: list[tuple[str, str, str]], vocab: dict[str, int]):
    import torch

    ids, mask = encode([f"{p} {a} ." for p, a, _ in data], vocab)
    logits = model(ids[:, :-1], mask[:, :-1])
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(),
                                               reduction="none").view(len(data), -1)
    weights = mask[:, 1:].double()
    # The answer is the one position that depends on an earlier word: weighted up, else the
    # unpredictable names and places dominate the loss.
    answer = torch.tensor([len(p.split()) - 1 for p, _, _ in data])
    weights[torch.arange(len(data)), answer] = ANSWER_WEIGHT
    return (losses * weights).sum() / weights.sum()


def make_causal_lm():
    """The trained model and the encoded SAMPLE_PROMPTS; fails loudly below 98% accuracy on
    held-out prompts."""
    model = train_causal_lm()
    accuracy = answer_accuracy(model, prompt_data(400, seed=1))
    if accuracy < 0.98:
        raise RuntimeError(f"causal LM reached {accuracy:.2%} on held-out prompts")
    ids, mask = encode(list(SAMPLE_PROMPTS), {t: i for i, t in enumerate(vocabulary())})
    return model, {"input_ids": ids, "attention_mask": mask}


def export_causal_lm(module, example: dict, path: Path) -> None:
    """ONNX (symbolic batch and sequence) plus vocab.txt and prompts.txt beside it."""
    export_text_model(module, example, Path(path))
    folder = Path(path).parent
    (folder / "vocab.txt").write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    (folder / "prompts.txt").write_text("\n".join(SAMPLE_PROMPTS) + "\n", encoding="utf-8")
