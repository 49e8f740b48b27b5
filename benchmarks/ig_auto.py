"""Integrated Gradients to a convergence delta below 1%: onnxplain's n_steps="auto" against
Captum's IntegratedGradients (LayerIntegratedGradients for BERT) at the step count Captum
needs for the same delta, and against Captum's default of 50 steps; one process, CPU,
Gauss-Legendre for both, the zoo models' torch originals for Captum.

    python benchmarks/ig_auto.py [--repeats 3] [--rows 4] [--models resnet18,digits_cnn,...]

The delta is |sum(IG) - (S(x) - S(x'))| / |S(x) - S(x')| per row, x' zeros (for BERT the
zero embedding, which Captum gets from the padding id 0). Captum runs one step count for the
whole batch: the smallest on its ladder (STEPS) where every row is below 1%. onnxplain's
auto raises the order per row (methods.ig_auto). Goal: auto <= 0.35 x Captum's 50 steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import interleaved_times, machine  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402

TOLERANCE = 0.01
STEPS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
MODELS = ("resnet18", "resnet18_64", "digits_cnn", "sentiment_bert")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=4, help="rows per batch")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    print(f"onnxplain {onnxplain.__version__}, torch threads {torch.get_num_threads()}, "
          f"{machine()}")
    print(f"best of {args.repeats} runs after a warm-up, each method apart; delta: worst row's "
          f"|delta| / |S(x) - S(x')|, target {TOLERANCE:.0%}\n")
    print(f"{'model':>14} {'rows':>4} {'auto s':>8} {'steps':>14} {'delta':>7} "
          f"{'captum n':>8} {'captum s':>9} {'delta':>7} {'c50 s':>8} {'delta':>7} "
          f"{'auto/cn':>8} {'auto/c50':>9}")
    for name in args.models.split(","):
        _compare(_case(name, args.rows), args.repeats)


class _Case:
    """A zoo model: onnxplain's explainer and method, Captum's attribute call, the gap."""

    def __init__(self, name, explainer, feeds, target, method, captum, gap, batch):
        self.name, self.explainer, self.feeds, self.target = name, explainer, feeds, target
        self.method, self.captum, self.gap, self.batch = method, captum, gap, batch


def _case(name: str, rows: int) -> _Case:
    import torch

    explainer = onnxplain.Explainer(model_zoo.model_path(name), providers="cpu",
                                    progress=False)
    module = model_zoo.load_torch(name).eval()
    sample = model_zoo.sample(name)
    if name.startswith("resnet18"):
        size = 224 if name == "resnet18" else 64
        x = np.random.default_rng(0).standard_normal((rows, 3, size, size)).astype(np.float32)
        sample = {next(iter(sample)): x}
    sample = {key: _rows(value, rows) for key, value in sample.items()}
    target = explainer.forward(sample)[explainer.model.outputs[0].name].argmax(axis=1)
    tensors = [torch.from_numpy(value) for value in sample.values()]
    targets = torch.from_numpy(target)
    if name == "sentiment_bert":
        from captum.attr import LayerIntegratedGradients

        from tests.transformers.torch_reference import unwrap

        embedding = unwrap(module).bert.embeddings.word_embeddings
        ig = LayerIntegratedGradients(module, embedding)
        zeros = torch.zeros_like(tensors[0])
        captum = partial(ig.attribute, tensors[0], baselines=zeros,
                         additional_forward_args=tuple(tensors[1:]), target=targets,
                         method="gausslegendre", return_convergence_delta=True)
        with torch.no_grad():
            clean, base = (module(ids, *tensors[1:]) for ids in (tensors[0], zeros))
        return _Case(name, explainer, sample, target, "layer_integrated_gradients", captum,
                     _gap(clean, base, target), None)
    from captum.attr import IntegratedGradients

    captum = partial(IntegratedGradients(module).attribute, tensors[0], target=targets,
                     method="gausslegendre", return_convergence_delta=True)
    with torch.no_grad():
        clean, base = module(tensors[0]), module(torch.zeros_like(tensors[0]))
    return _Case(name, explainer, sample, target, "integrated_gradients", captum,
                 _gap(clean, base, target), 32 if name == "resnet18" else None)


def _rows(value: np.ndarray, rows: int) -> np.ndarray:
    """`rows` rows: the sample's, repeated in turn where it has fewer."""
    return value[np.arange(rows) % len(value)]


def _gap(clean, base, target) -> np.ndarray:
    logits = [getattr(out, "logits", out) for out in (clean, base)]
    rows = np.arange(len(target))
    return (logits[0].detach().numpy()[rows, target]
            - logits[1].detach().numpy()[rows, target]).astype(np.float64)


def _captum_delta(case: _Case, steps: int) -> float:
    _, delta = case.captum(n_steps=steps, internal_batch_size=case.batch)
    return float(np.max(np.abs(delta.detach().numpy()) / np.abs(case.gap)))


def _compare(case: _Case, repeats: int) -> None:
    ours = partial(case.explainer.explain, case.feeds, method=case.method,
                   target=case.target, n_steps="auto", delta_tolerance=TOLERANCE)
    result = ours()
    auto_delta = float(np.max(np.abs(result.extras["convergence_delta"]) / np.abs(case.gap)))
    needed = next((n for n in STEPS if _captum_delta(case, n) < TOLERANCE), STEPS[-1])
    runs = {"auto": ours,
            "needed": partial(case.captum, n_steps=needed, internal_batch_size=case.batch),
            "fifty": partial(case.captum, n_steps=50, internal_batch_size=case.batch)}
    times = {}
    for key, run in runs.items():
        # Apart, not interleaved: ONNX Runtime's threads spin on after a run and slow the
        # torch run that follows (Captum's first run was 3-6x slower right after ours).
        time.sleep(1.0)
        times.update(interleaved_times({key: run}, repeats))
    # The best of the repeats: the machine is shared, and its other load only adds time.
    best = {key: min(value) for key, value in times.items()}
    steps = ",".join(str(int(s)) for s in result.extras["n_steps"])
    print(f"{case.name:>14} {len(case.target):>4} {best['auto']:>8.3f} {steps:>14} "
          f"{auto_delta:>7.2%} {needed:>8} {best['needed']:>9.3f} "
          f"{_captum_delta(case, needed):>7.2%} {best['fifty']:>8.3f} "
          f"{_captum_delta(case, 50):>7.2%} "
          f"{best['auto'] / best['needed']:>8.2f} {best['auto'] / best['fifty']:>9.2f}")


if __name__ == "__main__":
    main()
