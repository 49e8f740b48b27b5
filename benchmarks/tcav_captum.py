"""TCAV against Captum's TCAV, in one process with the same thread count, CPU (issue 21's
target: onnxplain <= 0.7 x Captum's time). TCAV is a test over sets of inputs, not a
per-input map, so it has its own script rather than a row in captum_peers.py.

The setup (tests/test_tcav.py drives Captum the same way, on the same layer):
  digits_cnn   layer features.2 (32x8x8); concepts: 7s and 0s from the training digits;
               random sets: other digits; inputs: the test digits; class 7
  resnet18_64  the last stage's output (512x2x2); random-weight model, so the sets are
               Gaussian images (concepts shifted by +-0.5); class 3
2 concepts and 3 random sets of --examples each, --inputs explained. Each side is timed over
the whole pipeline as a user runs it: the layer's activations for every set, the CAVs (one
per concept and random set), the inputs' layer gradients and the scores.
  onnxplain        onnxplain.tcav on an Explainer built beforehand (as the torch module is):
                   closed-form ridge CAVs, plus the 3 random-vs-random CAVs of its null test
                   (work Captum's interpret does not do)
  onnxplain cold   the same given the model's path, as the CLI runs it: the ONNX Runtime
                   sessions and the gradient program are built inside every call
  captum sgd       TCAV(...).interpret with its default classifier (sklearn-style SGD on a
                   random 2/3 split), a fresh save_path per run (Captum caches activations
                   and CAVs on disk and would otherwise skip the work)
  captum ridge     the same with onnxplain's ridge fit (fit_cav) injected as Captum's
                   Classifier: the same CAVs as onnxplain, so the same work up to the null
Captum 0.9 computes a set's activations again for every pair it is in (load_cavs passes
AV.exists the layer and the identifier swapped, so it never finds the saved ones): 12 forward
passes over the sets where onnxplain runs 5. That is part of what a Captum user waits for.
The agreement is printed beside each ratio: the largest gap in sign counts over the 6
concept/random pairs, and for ridge the relative L2 distance of the magnitudes (equal CAVs,
so float rounding); for SGD the mean cosine between its CAVs and onnxplain's.

    python benchmarks/tcav_captum.py [--model digits_cnn] [--examples 50] [--inputs 100]
        [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from captum.concept import TCAV, Classifier, Concept

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import interleaved_times, machine, median_ratio  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.concepts import fit_cav  # noqa: E402

RANDOM_SETS = 3
# model -> (ONNX layer, None: onnxplain's default, the last conv block; torch module; class)
SETUPS = {"digits_cnn": ("/features/features.2/Conv_output_0", "features.2", 7),
          "resnet18_64": (None, "model.resnet.encoder.stages.3", 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=SETUPS, default="digits_cnn")
    parser.add_argument("--examples", type=int, default=50, help="rows per concept/random set")
    parser.add_argument("--inputs", type=int, default=100, help="inputs explained")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    layer, torch_layer, target = SETUPS[args.model]
    explainer = onnxplain.Explainer(model_zoo.model_path(args.model), "cpu", progress=False)
    module = model_zoo.load_torch(args.model)
    data = _sets(args.model, args.examples, args.inputs)
    print(machine())
    print(f"onnxplain {onnxplain.__version__}, torch threads {torch.get_num_threads()}, "
          f"{args.model} at {torch_layer}, 2 concepts and {RANDOM_SETS} random sets of "
          f"{args.examples}, {args.inputs} inputs, class {target}, medians of {args.repeats} "
          "runs after a warm-up")

    def ours(model=explainer):
        return lambda: onnxplain.tcav(model, data["inputs"], data["concepts"], data["randoms"],
                                      layer=layer, target=target)

    def captum(classifier):
        return lambda: _captum_scores(module, torch_layer, data, target, classifier)

    runs = {"onnxplain": ours(), "onnxplain cold": ours(model_zoo.model_path(args.model)),
            "captum sgd": captum(None), "captum ridge": captum(RidgeCavs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's DefaultClassifier warns on every build
        times = interleaved_times(runs, args.repeats)
        scores = {name: runs[name]() for name in ("captum sgd", "captum ridge")}
    result = runs["onnxplain"]()
    ours_scores = {name: (test.sign_count, test.magnitude, test.cavs)
                   for name, test in result.concepts.items()}
    print(f"\n{'onnxplain':>14} {'captum':>13} {'onnxplain s':>12} {'captum s':>9} "
          f"{'ours/captum':>12} {'max sign gap':>13}  agreement")
    for mine, theirs in (("onnxplain", "captum sgd"), ("onnxplain", "captum ridge"),
                         ("onnxplain cold", "captum sgd")):
        gap, agreement = _agreement(ours_scores, scores[theirs], exact=theirs == "captum ridge")
        print(f"{mine:>14} {theirs:>13} {statistics.median(times[mine]):>12.3f} "
              f"{statistics.median(times[theirs]):>9.3f} "
              f"{median_ratio(times[mine], times[theirs]):>12.2f} {gap:>13.3f}  {agreement}")


def _sets(model: str, examples: int, inputs: int) -> dict:
    """{inputs, concepts: name -> rows, randoms: [rows]} for the model."""
    rng = np.random.default_rng(0)
    if model == "digits_cnn":
        from model_zoo.digits import digits_data

        train, labels, test, _ = digits_data()
        others = train[(labels != 7) & (labels != 0)]
        picks = rng.choice(len(others), RANDOM_SETS * examples, replace=False)
        return {"inputs": test[:inputs],
                "concepts": {"seven": train[labels == 7][:examples],
                             "zero": train[labels == 0][:examples]},
                "randoms": list(others[picks].reshape(RANDOM_SETS, examples, 1, 8, 8))}

    def images(count: int, shift: float = 0.0) -> np.ndarray:
        return (rng.standard_normal((count, 3, 64, 64)) + shift).astype(np.float32)

    return {"inputs": images(inputs), "concepts": {"bright": images(examples, 0.5),
                                                   "dark": images(examples, -0.5)},
            "randoms": [images(examples) for _ in range(RANDOM_SETS)]}


def _captum_scores(module, layer: str, data: dict, target: int, classifier) -> dict:
    """Captum's TCAV.interpret over every (concept, random set) pair, from scratch:
    name -> (sign counts, magnitudes, CAVs) per random set, as onnxplain's."""
    def concept(index: int, name: str, rows: np.ndarray) -> Concept:
        return Concept(index, name, [torch.from_numpy(rows)])  # one batch per set

    # Concepts take the lower ids: Captum orders each pair's scores by id.
    concepts = [concept(i, name, rows) for i, (name, rows) in enumerate(data["concepts"].items())]
    randoms = [concept(len(concepts) + i, f"random{i}", rows)
               for i, rows in enumerate(data["randoms"])]
    save_path = tempfile.mkdtemp(prefix="tcav_captum_")
    try:
        tcav = TCAV(module, [layer], classifier=None if classifier is None else classifier(),
                    save_path=save_path)
        scores = tcav.interpret(torch.from_numpy(data["inputs"]),
                                [[c, r] for c in concepts for r in randoms], target=target)
        out = {}
        for c in concepts:  # each pair's scores are [concept's, random set's]: keep the first
            pairs = [f"{c.id}-{r.id}" for r in randoms]
            sign, magnitude = (np.array([float(scores[k][layer][score][0]) for k in pairs])
                               for score in ("sign_count", "magnitude"))
            cavs = np.stack([tcav.cavs[k][layer].stats["weights"][0].double().numpy()
                             for k in pairs])
            out[c.name] = (sign, magnitude, cavs)
        return out
    finally:
        shutil.rmtree(save_path, ignore_errors=True)


class RidgeCavs(Classifier):
    """onnxplain's ridge CAV (fit_cav) as Captum's Classifier: the lower class id is the
    concept, its weight row the unit CAV pointing to it."""

    def __init__(self) -> None:
        self.cav, self.ids = None, None

    def train_and_eval(self, dataloader, **kwargs) -> dict:
        x, y = (torch.cat(parts).double().numpy() for parts in zip(*dataloader, strict=True))
        self.ids = sorted(set(y.astype(int).tolist()))
        self.cav, accuracy = fit_cav(x[y == self.ids[0]], x[y == self.ids[1]])
        return {"accs": torch.tensor(accuracy)}

    def weights(self):
        cav = torch.from_numpy(self.cav)
        return torch.stack([cav, -cav])

    def classes(self) -> list[int]:
        return self.ids


def _agreement(ours: dict, theirs: dict, exact: bool) -> tuple[float, str]:
    """(largest sign-count gap, a note on the rest): magnitudes for equal CAVs, the CAVs'
    cosine where Captum trained its own."""
    gap = max(float(np.abs(ours[n][0] - theirs[n][0]).max()) for n in ours)
    if exact:
        ours_m = np.concatenate([ours[n][1] for n in ours])
        theirs_m = np.concatenate([theirs[n][1] for n in ours])
        distance = np.linalg.norm(ours_m - theirs_m) / max(np.linalg.norm(theirs_m), 1e-30)
        return gap, f"magnitude distance {distance:.2e}"
    cosines = [float(a @ b / np.linalg.norm(b)) for n in ours
               for a, b in zip(ours[n][2], theirs[n][2], strict=True)]
    signs = " ".join(f"{n} {ours[n][0].mean():.2f}/{theirs[n][0].mean():.2f}" for n in ours)
    return gap, f"CAV cosine {np.mean(cosines):.2f}; mean sign counts ours/captum: {signs}"


if __name__ == "__main__":
    main()
