"""A tiny BERT sentiment classifier trained on generated English with negations.

It exists to show negative evidence in the demo and the README: "good" alone is evidence for
the positive class, but in "the movie was not good" the word "not" is evidence against it and
wins, so signed attributions have a token that points the other way to show.

The data are word-level, lowercase and generated from a seeded `random.Random`. Labelling rule
(1 = positive, 0 = negative):
- a clause takes its adjective's (or verb's) polarity: "the acting was really great" -> 1;
- "not" or "never" in front of it flips that: "the plot was never boring" -> 1,
  "i did not like the ending" -> 0; "at all" only strengthens: "not bad at all" -> 1;
- "A but B" joins clauses of opposite sentiment and B decides:
  "the food was bad but the service was great" -> 1.
"""

from __future__ import annotations

import random
from pathlib import Path

from .hf_models import _export, _logits_wrapper

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PAD, UNK, CLS, SEP = range(4)

# Sentences every trained model must get right (and the reason this model exists).
PROBES = {"good": 1, "not good": 0, "bad": 0, "not bad": 1, "not bad at all": 1,
          "the movie was not good": 0, "the movie was great": 1, "the movie was terrible": 0}
SAMPLE_SENTENCES = ("the movie was not good", "not bad at all", "the movie was great", "good",
                    "i did not like the ending", "the food was bad but the service was great")

POSITIVE = ("good", "great", "excellent", "wonderful", "amazing", "brilliant", "enjoyable",
            "fun", "lovely", "nice", "fantastic", "superb")
NEGATIVE = ("bad", "terrible", "awful", "boring", "dull", "horrible", "poor", "weak",
            "disappointing", "bland", "mediocre", "annoying")
SUBJECTS = ("the movie", "the film", "this film", "this movie", "the acting", "the plot",
            "the story", "the ending", "the music", "the food", "the service", "the show",
            "the book", "the cast", "the dialogue", "the soundtrack")
INTENSIFIERS = ("really", "very", "so", "quite", "truly", "pretty")
# (base form, past tense, polarity)
VERBS = (("like", "liked", 1), ("love", "loved", 1), ("enjoy", "enjoyed", 1),
         ("hate", "hated", 0), ("dislike", "disliked", 0))


def _clause(rng: random.Random, bare: bool) -> tuple[str, int]:
    """One clause and its label; `bare` allows the subjectless forms ("not bad at all")."""
    negate = rng.random() < 0.5
    if rng.random() < 0.25:
        base, past, polarity = rng.choice(VERBS)
        obj = rng.choice(SUBJECTS)
        if not negate:
            words = ["i", *rng.choice(([], ["really"], ["really"], ["truly"])), past, obj]
        elif rng.random() < 0.3:
            words = ["i", "never", past, obj]
        else:
            words = ["i", "did", "not", base, obj]
        tail = ["at", "all"] if negate and rng.random() < 0.3 else []
        return " ".join(words + tail), polarity ^ negate
    polarity = rng.random() < 0.5
    adjective = rng.choice(POSITIVE if polarity else NEGATIVE)
    if negate:
        # intensifiers after a negation ("not very bad") are hedges, not flips: left out
        phrase = [rng.choice(("not", "not", "never")), adjective]
        if rng.random() < 0.35:
            phrase += ["at", "all"]
    else:
        phrase = [rng.choice(INTENSIFIERS), adjective] if rng.random() < 0.4 else [adjective]
    if bare and rng.random() < 0.3:
        words = phrase
    else:
        words = [*rng.choice(SUBJECTS).split(), rng.choice(("was", "is")), *phrase]
    return " ".join(words), int(polarity) ^ negate


def _sentence(rng: random.Random) -> tuple[str, int]:
    if rng.random() < 0.2:
        first, before = _clause(rng, bare=False)
        second, label = _clause(rng, bare=False)
        while label == before:  # "but" joins clauses that disagree; the second one decides
            second, label = _clause(rng, bare=False)
        return f"{first} but {second}", label
    return _clause(rng, bare=True)


def sentiment_data(per_class: int = 2000, seed: int = 0,
                   test_fraction: float = 0.2) -> tuple[list[tuple[str, int]], ...]:
    """(train, test): distinct labelled sentences, `per_class` of each label, split at random."""
    rng = random.Random(seed)
    chosen: dict[str, int] = {}
    counts = [0, 0]
    while min(counts) < per_class:
        sentence, label = _sentence(rng)
        if sentence not in chosen and counts[label] < per_class:
            chosen[sentence] = label
            counts[label] += 1
    pairs = sorted(chosen.items())  # insertion order would depend on the rejection pattern
    rng.shuffle(pairs)
    cut = int(len(pairs) * test_fraction)
    return pairs[cut:], pairs[:cut]


def vocabulary() -> list[str]:
    """The special tokens, then every word of the data (and the sample) in sorted order."""
    train, test = sentiment_data()
    words = {word for sentence, _ in train + test for word in sentence.split()}
    words |= {word for sentence in SAMPLE_SENTENCES + tuple(PROBES) for word in sentence.split()}
    return [*SPECIAL_TOKENS, *sorted(words)]


def load_vocabulary(path: str | Path) -> list[str]:
    """Tokens of a vocab.txt written by the export: one a line, line number = id."""
    return Path(path).read_text(encoding="utf-8").splitlines()


def encode(sentences: list[str], vocab: dict[str, int], length: int | None = None):
    """(input_ids, attention_mask), int64 [N, S]: `[CLS] words [SEP]`, zero-padded to the
    longest sentence (or `length`); the mask is 1 on real tokens. Unknown words map to [UNK]."""
    import torch

    rows = [[CLS, *(vocab.get(w, UNK) for w in s.lower().split()), SEP] for s in sentences]
    longest = max((len(row) for row in rows), default=2)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sentence needs {longest} tokens, more than length={length}")
    ids = torch.zeros(len(rows), length, dtype=torch.int64)
    mask = torch.zeros(len(rows), length, dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


def sentiment_architecture(vocab_size: int | None = None):
    """The untrained classifier, forward(input_ids, attention_mask) -> logits [N, 2]."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=vocab_size or len(vocabulary()), hidden_size=64,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=128, num_labels=2, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return _logits_wrapper(BertForSequenceClassification(config),
                           ("input_ids", "attention_mask"))


def _accuracy(model, pairs: list[tuple[str, int]], vocab: dict[str, int]) -> float:
    import torch

    ids, mask = encode([s for s, _ in pairs], vocab)
    with torch.no_grad():
        predicted = model(ids, mask).argmax(1)
    return (predicted == torch.tensor([y for _, y in pairs])).double().mean().item()


def train_sentiment(epochs: int = 8, batch_size: int = 32, lr: float = 2e-3):
    """Train the classifier; returns (model in eval mode, {"train": acc, "test": acc})."""
    import torch

    train, test = sentiment_data()
    vocab = {token: i for i, token in enumerate(vocabulary())}
    # One thread: the same weights on any machine, and no OpenMP spinning against other jobs
    # on a busy CPU (2 threads ran >10x slower than 1 beside another job). Restored, as the RNG
    # is by fork_rng, so the caller's torch state is left as it was.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _fit(train, vocab, epochs, batch_size, lr)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, {"train": _accuracy(model, train, vocab), "test": _accuracy(model, test, vocab)}


def _fit(train: list[tuple[str, int]], vocab: dict[str, int], epochs: int, batch_size: int,
         lr: float):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = sentiment_architecture(len(vocab))
        ids, mask = encode([s for s, _ in train], vocab)
        labels = torch.tensor([y for _, y in train])
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        steps = epochs * -(-len(labels) // batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps)
        generator = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(labels), generator=generator).split(batch_size):
                width = int(mask[batch].sum(1).max())  # trim the padding this batch never uses
                optimiser.zero_grad()
                logits = model(ids[batch, :width], mask[batch, :width])
                torch.nn.functional.cross_entropy(logits, labels[batch]).backward()
                optimiser.step()
                schedule.step()
    return model


def make_sentiment_bert():
    """The trained classifier and a padded sample of SAMPLE_SENTENCES; fails loudly if it
    reaches less than 97% held-out accuracy or gets a probe wrong."""
    import torch

    model, accuracy = train_sentiment()
    vocab = {token: i for i, token in enumerate(vocabulary())}
    ids, mask = encode(list(PROBES), vocab)
    with torch.no_grad():
        predicted = model(ids, mask).argmax(1).tolist()
    wrong = [s for s, p in zip(PROBES, predicted, strict=True) if PROBES[s] != p]
    if accuracy["test"] < 0.97 or wrong:
        raise RuntimeError(f"sentiment model reached {accuracy['test']:.2%} held-out accuracy; "
                           f"wrong probes: {wrong}")
    ids, mask = encode(list(SAMPLE_SENTENCES), vocab)
    return model, {"input_ids": ids, "attention_mask": mask}


def export_sentiment_bert(module, example: dict, path: Path) -> None:
    """ONNX (symbolic batch and sequence) plus vocab.txt and sentences.txt beside it."""
    _export(module, example, Path(path), {0: "batch", 1: "sequence"})
    folder = Path(path).parent
    (folder / "vocab.txt").write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    (folder / "sentences.txt").write_text("\n".join(SAMPLE_SENTENCES) + "\n", encoding="utf-8")
