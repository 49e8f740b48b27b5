"""Rejecting noise and adversarial digits with the epsilon neuron (the seed's MNIST test, on
scikit-learn's 8x8 digits).

A local classifier Y = eps-softmax(-d(W, x); tau) . V (one local layer, centers W = training
rows, V = their one-hot labels) is initialised from data, never trained. Its epsilon neuron
wins when the nearest center is farther than -eps; eps is calibrated on held-out training rows.
White-box FGSM and PGD (L-infinity, pixels clipped to [0, 1]) use onnxplain's own input
gradients (`onnxplain.autodiff.differentiate`) of the cross-entropy of the exported model run
by ONNX Runtime. Sweeping eps (a threshold on the nearest-center distance) traces adversarial
rejection against clean rejection.

    .venv/bin/python experiments/digits_rejection.py [--out experiments/results] [--small]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from onnxplain.autodiff import differentiate
from onnxplain.local import LocalLayer, LocalNetwork, calibrate_epsilon, classifier_from_data

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = 10
TARGET_CLEAN_REJECTION = 0.06  # the seed: ~6% of clean inputs rejected ...
TARGET_ADV_REJECTION = 0.5     # ... while ~50% of adversarial examples are


@dataclass(frozen=True)
class Config:
    """What the classifier is built from; count None = every fitting row is a center."""

    distance: str = "l1"
    count: int | None = None
    temperature_factor: float = 1.0   # times onnxplain's auto temperature

    def label(self) -> str:
        count = "all" if self.count is None else str(self.count)
        return f"{self.distance}, {count} centers, tau x{self.temperature_factor:g}"


@dataclass
class Settings:
    budgets: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    pgd_steps: int = 20
    pgd_step_fraction: float = 0.25     # PGD step = this times the budget
    noise_samples: int = 2000
    test_limit: int | None = None       # attack at most this many test rows
    sweep: tuple[Config, ...] = tuple(Config(d, c, t) for d in ("l2", "l1", "cosine")
                                      for c in (300, None) for t in (1.0, 2.0, 4.0))
    sweep_budgets: tuple[float, ...] = (0.1, 0.2)
    sweep_min_accuracy: float = 0.95
    fixed: Config | None = None         # skip the sweep and use this configuration
    seed: int = 0
    # "pgd_adaptive:w" attacks the deployed model with weight w on staying unrejected
    attacks: tuple[str, ...] = ("fgsm", "pgd", "pgd_early_stop", "pgd_adaptive:1",
                                "pgd_adaptive:20")
    extra: dict = field(default_factory=dict)


SMALL = Settings(budgets=(0.2,), pgd_steps=5, noise_samples=300, test_limit=100,
                 sweep=(), fixed=Config("l1", 200, 2.0), attacks=("fgsm", "pgd"))


# -- data and model --------------------------------------------------------------------------

@dataclass
class Splits:
    fit_x: np.ndarray     # centers are drawn from these rows
    fit_y: np.ndarray
    cal_x: np.ndarray     # held out from the training part: epsilon calibration, model choice
    cal_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_splits(seed: int) -> Splits:
    """Stratified 70/30 train/test split; 20% of the training part held out."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixels 0..16 -> [0, 1]
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.3, stratify=y,
                                                        random_state=seed)
    fit_x, cal_x, fit_y, cal_y = train_test_split(train_x, train_y, test_size=0.2,
                                                  stratify=train_y, random_state=seed)
    return Splits(fit_x, fit_y, cal_x, cal_y, test_x, test_y)


def build(config: Config, splits: Splits, seed: int) -> LocalLayer:
    count = len(splits.fit_x) if config.count is None else config.count
    layer = classifier_from_data(splits.fit_x, splits.fit_y, count, distance=config.distance,
                                 classes=CLASSES, seed=seed)
    return replace(layer, temperature=layer.temperature * config.temperature_factor)


def nearest_distance(layer: LocalLayer, x: np.ndarray) -> np.ndarray:
    """The rejection score: the epsilon neuron wins exactly when it exceeds -eps."""
    return layer.distances(x).min(axis=1)


class OnnxModel:
    """The exported local classifier in ONNX Runtime, with onnxplain's input gradients of
    seed-weighted `output` and `layer0/epsilon`."""

    def __init__(self, layer: LocalLayer):
        self.layer = layer
        diff = differentiate(LocalNetwork([layer]).to_onnx(), ["x"],
                             outputs=["output", "layer0/epsilon"])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(diff.model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.seed_output = diff.seeds["output"]
        self.seed_epsilon = diff.seeds["layer0/epsilon"]
        self.grad = diff.grads["x"]

    def _feeds(self, x: np.ndarray, output_seed=None, epsilon_seed=None) -> dict:
        n = len(x)
        return {"x": np.asarray(x, np.float32),
                self.seed_output: np.zeros((n, CLASSES), np.float32)
                if output_seed is None else output_seed.astype(np.float32),
                self.seed_epsilon: np.zeros(n, np.float32)
                if epsilon_seed is None else epsilon_seed.astype(np.float32)}

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class shares Y [N, 10], center activations [N, K], epsilon activation [N])."""
        y, a, e = self.session.run(["output", "layer0/activations", "layer0/epsilon"],
                                   self._feeds(x))
        return y, a, e

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[0].argmax(1)

    def rejected(self, x: np.ndarray) -> np.ndarray:
        """The epsilon neuron has the highest activation (computed by ONNX Runtime)."""
        _, a, e = self.forward(x)
        return e > a.max(1)

    def gradient(self, x: np.ndarray, labels: np.ndarray, adaptive_weight: float = 0.0
                 ) -> np.ndarray:
        """d J / d x for J = -log Y_label + (1 + w) log(1 - e), one row per input.

        With w = 0 and eps = -inf this is the cross-entropy (Y sums to 1). Since
        -log Y_label = -log(Y_label / (1 - e)) - log(1 - e), a weight w > 0 ascends the
        cross-entropy of the class shares while *lowering* the epsilon activation by
        w log(1 - e): the adaptive attacker that also tries to stay unrejected."""
        y, _, e = self.forward(x)
        one_hot = np.eye(CLASSES, dtype=np.float64)[labels]
        output_seed = -one_hot / np.maximum(y.astype(np.float64), 1e-30)
        epsilon_seed = None
        if adaptive_weight:
            epsilon_seed = -(1 + adaptive_weight) / np.maximum(1.0 - e.astype(np.float64),
                                                               1e-30)
        return self.session.run([self.grad], self._feeds(x, output_seed, epsilon_seed))[0]

    def objective(self, x: np.ndarray, labels: np.ndarray, adaptive_weight: float = 0.0
                  ) -> np.ndarray:
        """J per row, in float64 from the float32 outputs (for finite-difference checks)."""
        y, _, e = self.forward(x)
        y, e = y.astype(np.float64), e.astype(np.float64)
        value = -np.log(y[np.arange(len(x)), labels])
        return value + (1 + adaptive_weight) * np.log1p(-e) if adaptive_weight else value


# -- attacks ---------------------------------------------------------------------------------

def project(x: np.ndarray, origin: np.ndarray, budget: float) -> np.ndarray:
    """Back into the L-infinity ball around origin and the pixel range."""
    return np.clip(np.clip(x, origin - budget, origin + budget), 0.0, 1.0).astype(np.float32)


def fgsm(model: OnnxModel, x: np.ndarray, labels: np.ndarray, budget: float) -> np.ndarray:
    return project(x + budget * np.sign(model.gradient(x, labels)), x, budget)


def pgd(model: OnnxModel, x: np.ndarray, labels: np.ndarray, budget: float, steps: int,
        step_fraction: float, early_stop: bool = False, adaptive_weight: float = 0.0
        ) -> np.ndarray:
    """Signed-gradient ascent from x, projected each step. early_stop freezes a row once its
    prediction has changed (smallest-step adversarial examples rather than the deepest)."""
    adv, active = x.copy(), np.ones(len(x), bool)
    for _ in range(steps):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        step = np.sign(model.gradient(adv[rows], labels[rows], adaptive_weight))
        adv[rows] = project(adv[rows] + step_fraction * budget * step, x[rows], budget)
        if early_stop:
            active[rows] = model.predict(adv[rows]) == labels[rows]
    return adv


def attack(name: str, attacked: OnnxModel, deployed: OnnxModel, x: np.ndarray,
           labels: np.ndarray, budget: float, s: Settings) -> np.ndarray:
    """The non-adaptive attacks see the classifier without its epsilon neuron (they do not
    know about the detector); the adaptive one differentiates the deployed model."""
    if name == "fgsm":
        return fgsm(attacked, x, labels, budget)
    if name.startswith("pgd_adaptive:"):
        return pgd(deployed, x, labels, budget, s.pgd_steps, s.pgd_step_fraction,
                   adaptive_weight=float(name.split(":")[1]))
    return pgd(attacked, x, labels, budget, s.pgd_steps, s.pgd_step_fraction,
               early_stop=name == "pgd_early_stop")


# -- rejection curves ------------------------------------------------------------------------

def rejection_curve(clean: np.ndarray, adversarial: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(clean rejection, adversarial rejection) for every threshold on the score, from
    rejecting nothing to rejecting everything (scores above the threshold are rejected)."""
    thresholds = np.unique(np.concatenate([clean, adversarial]))[::-1]
    clean_sorted, adv_sorted = np.sort(clean), np.sort(adversarial)
    above = np.searchsorted  # count of scores >= t is n - searchsorted(left)
    fpr = (len(clean) - above(clean_sorted, thresholds, "left")) / len(clean)
    tpr = (len(adversarial) - above(adv_sorted, thresholds, "left")) / len(adversarial)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def auroc(clean: np.ndarray, adversarial: np.ndarray) -> float:
    """P(adversarial score > clean score) + P(equal) / 2 (Mann-Whitney), by average ranks."""
    scores = np.concatenate([clean, adversarial])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores[order][np.r_[False, np.diff(scores[order]) == 0]]):
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_adv, n_clean = len(adversarial), len(clean)
    return float((ranks[n_clean:].sum() - n_adv * (n_adv + 1) / 2) / (n_adv * n_clean))


def rejection_at(clean: np.ndarray, adversarial: np.ndarray, clean_rate: float
                 ) -> tuple[float, float]:
    """Best adversarial rejection with at most clean_rate of clean inputs rejected, and the
    clean rejection actually reached there."""
    fpr, tpr = rejection_curve(clean, adversarial)
    ok = fpr <= clean_rate + 1e-12
    best = int(np.flatnonzero(ok)[np.argmax(tpr[ok])])
    return float(tpr[best]), float(fpr[best])


# -- one configuration -----------------------------------------------------------------------

def evaluate(layer: LocalLayer, clean_x: np.ndarray, clean_y: np.ndarray, cal_x: np.ndarray,
             s: Settings, budgets: tuple[float, ...], attacks: tuple[str, ...],
             keep_examples: bool = False) -> dict:
    """Accuracy, calibrated epsilon and, per attack and budget, the adversarial examples'
    rejection. Clean scores are every clean row's; adversarial ones are the attacks that turn
    a correct prediction into a wrong one."""
    epsilon = calibrate_epsilon(layer, cal_x, TARGET_CLEAN_REJECTION)
    attacked = OnnxModel(replace(layer, epsilon=float("-inf")))
    deployed = OnnxModel(replace(layer, epsilon=epsilon))
    predictions = attacked.predict(clean_x)
    correct = predictions == clean_y
    clean_scores = nearest_distance(layer, clean_x)
    result = {"layer": layer, "epsilon": epsilon, "accuracy": float(correct.mean()),
              "clean_scores": clean_scores, "deployed": deployed, "attacked": attacked,
              "clean_rejected_at_epsilon": float(deployed.rejected(clean_x).mean()),
              "attacks": {}}
    x, labels = clean_x[correct], clean_y[correct]
    for name in attacks:
        for budget in budgets:
            adv = attack(name, attacked, deployed, x, labels, budget, s)
            flipped = attacked.predict(adv) != labels
            scores = nearest_distance(layer, adv[flipped])
            row = {"flip_rate": float(flipped.mean()), "count": int(flipped.sum())}
            if flipped.any():
                rate, reached = rejection_at(clean_scores, scores, TARGET_CLEAN_REJECTION)
                rejected = deployed.rejected(adv[flipped])
                row |= {"rejected_at_6": rate, "clean_at_6": reached,
                        "rejected_at_epsilon": float(rejected.mean()),
                        "auroc": auroc(clean_scores, scores), "scores": scores,
                        # the attacks that flip the class AND pass the detector
                        "undetected_success": float((~rejected).sum() / len(x)),
                        "linf": float(np.abs(adv[flipped] - x[flipped]).max())}
            if keep_examples:
                row |= {"adversarial": adv[flipped], "origin": x[flipped],
                        "labels": labels[flipped]}
            result["attacks"][(name, budget)] = row
    return result


def sweep(splits: Splits, s: Settings) -> list[dict]:
    """Model choice on the held-out calibration rows only (the test split is not looked at):
    each configuration attacked with FGSM and PGD there."""
    rows = []
    for config in s.sweep:
        layer = build(config, splits, s.seed)
        r = evaluate(layer, splits.cal_x, splits.cal_y, splits.cal_x, s, s.sweep_budgets,
                     ("fgsm", "pgd"))
        pgd_rates = [r["attacks"][("pgd", b)].get("rejected_at_6", 0.0)
                     for b in s.sweep_budgets]
        rows.append({"config": config, "accuracy": r["accuracy"],
                     "score": float(np.mean(pgd_rates)), "attacks": r["attacks"]})
    return rows


def choose(rows: list[dict], min_accuracy: float) -> Config:
    usable = [r for r in rows if r["accuracy"] >= min_accuracy] or rows
    return max(usable, key=lambda r: r["score"])["config"]


# -- pictures --------------------------------------------------------------------------------

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75)]


def plot_curves(curves: list[tuple[str, np.ndarray, np.ndarray]], title: str,
                path: Path, size: int = 360) -> str:
    """Adversarial rejection (y) against clean rejection (x), one line per curve, with the
    6% clean-rejection line dashed."""
    margin, legend = 40, 16 * len(curves) + 8
    image = Image.new("RGB", (size + 2 * margin, size + 2 * margin + legend), "white")
    draw = ImageDraw.Draw(image)

    def at(fx: float, fy: float) -> tuple[float, float]:
        return margin + fx * size, margin + (1 - fy) * size

    draw.rectangle((*at(0, 1), *at(1, 0)), outline=(0, 0, 0))
    for tick in np.linspace(0, 1, 6):
        px, py = at(tick, 0)
        draw.line((px, py, px, py + 4), fill=(0, 0, 0))
        draw.text((px - 8, py + 6), f"{tick:.1f}", fill=(0, 0, 0))
        qx, qy = at(0, tick)
        draw.line((qx - 4, qy, qx, qy), fill=(0, 0, 0))
        draw.text((qx - 26, qy - 6), f"{tick:.1f}", fill=(0, 0, 0))
    draw.line((*at(0, 0), *at(1, 1)), fill=(200, 200, 200))
    for y0 in np.arange(0, 1, 0.04):  # dashed vertical line at 6% clean rejection
        draw.line((*at(TARGET_CLEAN_REJECTION, y0), *at(TARGET_CLEAN_REJECTION, y0 + 0.02)),
                  fill=(120, 120, 120))
    draw.text((margin, 4), title, fill=(0, 0, 0))
    draw.text((margin + size / 2 - 60, margin + size + 20), "clean inputs rejected",
              fill=(0, 0, 0))
    draw.text((4, margin - 16), "adversarial rejected", fill=(0, 0, 0))
    for i, (name, fpr, tpr) in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        draw.line([at(a, b) for a, b in zip(fpr, tpr, strict=True)], fill=colour, width=2)
        ly = 2 * margin + size + 4 + 16 * i
        draw.line((margin, ly + 6, margin + 20, ly + 6), fill=colour, width=3)
        draw.text((margin + 26, ly), name, fill=(0, 0, 0))
    image.save(path, optimize=True)
    return path.name


def example_strip(result: dict, name: str, budget: float, path: Path, count: int = 8) -> str:
    """Clean digits (top) and their adversarial versions (bottom), 8x enlarged."""
    row = result["attacks"][(name, budget)]
    origin, adv = row["origin"][:count], row["adversarial"][:count]
    scale, pad = 6, 4
    image = Image.new("L", (len(origin) * (8 * scale + pad) + pad, 2 * (8 * scale + pad) + pad),
                      255)
    for i, pair in enumerate(zip(origin, adv, strict=True)):
        for j, digit in enumerate(pair):
            tile = Image.fromarray((255 * (1 - digit.reshape(8, 8))).astype(np.uint8))
            image.paste(tile.resize((8 * scale, 8 * scale), Image.NEAREST),
                        (pad + i * (8 * scale + pad), pad + j * (8 * scale + pad)))
    image.save(path, optimize=True)
    return path.name


# -- report ----------------------------------------------------------------------------------

def noise_rejection(deployed: OnnxModel, count: int, seed: int) -> float:
    noise = np.random.default_rng(seed).uniform(size=(count, 64)).astype(np.float32)
    return float(deployed.rejected(noise).mean())


def write_report(path: Path, s: Settings, config: Config, result: dict, noise: float,
                 sweep_rows: list[dict], pngs: dict[str, str], splits: Splits) -> None:
    layer = result["layer"]
    lines = [
        "# Rejecting adversarial digits with the epsilon neuron", "",
        "scikit-learn's 8x8 digits, pixels scaled to [0, 1]; stratified split (seed "
        f"{s.seed}): {len(splits.fit_x)} rows for centers, {len(splits.cal_x)} held-out "
        f"training rows (epsilon calibration and model choice), {len(splits.test_x)} test "
        "rows. One local layer Y = eps-softmax(-d(W, x); tau) . V initialised from data "
        "(no training); every number below comes from ONNX Runtime running the exported "
        "model, the attacks from onnxplain's input gradients (`differentiate`).", "",
        f"**Configuration** (chosen on the held-out rows, see the sweep): {config.label()}; "
        f"K = {layer.size} centers, tau = {layer.temperature:.4g}, calibrated eps = "
        f"{result['epsilon']:.4g} (rejects {TARGET_CLEAN_REJECTION:.0%} of the held-out "
        "rows).", "",
        "| measure | value |", "|---|---|",
        f"| test accuracy | {result['accuracy']:.4f} |",
        f"| clean test inputs rejected at the calibrated eps | "
        f"{result['clean_rejected_at_epsilon']:.4f} |",
        f"| uniform-noise inputs rejected ({s.noise_samples}) | {noise:.4f} |", "",
        "## Adversarial examples", "",
        f"L-infinity attacks from the correctly classified test digits, pixels clipped to "
        f"[0, 1]. FGSM: one signed-gradient step. PGD: {s.pgd_steps} steps of "
        f"{s.pgd_step_fraction} x budget, no random start. 'pgd_early_stop' stops a row as "
        "soon as its prediction changes. FGSM and PGD attack the classifier without its "
        "epsilon neuron (the attacker does not know about the detector); 'pgd_adaptive:w' "
        "differentiates the deployed model and also lowers the epsilon activation "
        "(J = CE of the class shares + w log(1 - e)). Only examples that "
        "change a correct prediction are kept (the oracle is the ONNX model itself).", "",
        "Columns: flipped = share of correct inputs whose prediction the attack changed; "
        "rej @<=6% = adversarial rejection at the best threshold rejecting at most 6% of "
        "clean test inputs (clean rate reached in brackets); rej @eps = adversarial "
        "rejection at the eps calibrated on held-out rows; undetected = share of correct "
        "inputs turned into accepted wrong predictions.", "",
        "| attack | budget | flipped | n | rej @<=6% clean | rej @eps | AUROC | undetected |",
        "|---|---|---|---|---|---|---|---|"]
    for (name, budget), row in result["attacks"].items():
        if not row["count"]:
            lines.append(f"| {name} | {budget} | 0 | 0 | - | - | - | 0 |")
            continue
        mark = " **ok**" if row["rejected_at_6"] >= TARGET_ADV_REJECTION else ""
        lines.append(f"| {name} | {budget} | {row['flip_rate']:.3f} | {row['count']} | "
                     f"{row['rejected_at_6']:.3f} ({row['clean_at_6']:.3f}){mark} | "
                     f"{row['rejected_at_epsilon']:.3f} | {row['auroc']:.3f} | "
                     f"{row['undetected_success']:.3f} |")
    lines += ["", "**ok** = the issue's target (>= 50% of adversarial examples rejected at "
              "<= 6% of clean inputs rejected) is met.", ""]
    lines += [f"![{name}]({png})" for name, png in pngs.items()]
    if sweep_rows:
        lines += ["", "## Model choice (held-out training rows only)", "",
                  "Each configuration attacked on the held-out rows; the score is the mean "
                  f"PGD rejection at <= 6% clean rejection over budgets {s.sweep_budgets}, "
                  f"among configurations with held-out accuracy >= {s.sweep_min_accuracy}.",
                  "", "| configuration | held-out acc | " + " | ".join(
                      f"{a} {b} flipped / rej" for a in ("fgsm", "pgd")
                      for b in s.sweep_budgets) + " | score |",
                  "|---|---|" + "---|" * (2 * len(s.sweep_budgets) + 1)]
        for r in sweep_rows:
            cells = []
            for a in ("fgsm", "pgd"):
                for b in s.sweep_budgets:
                    row = r["attacks"][(a, b)]
                    cells.append(f"{row['flip_rate']:.2f} / {row.get('rejected_at_6', 0):.2f}")
            lines.append(f"| {r['config'].label()} | {r['accuracy']:.3f} | "
                         + " | ".join(cells) + f" | {r['score']:.3f} |")
    lines += ["", "## Notes", "", *s.extra.get("notes", [])]
    path.write_text("\n".join(lines) + "\n")


NOTES = [
    "- The score is the nearest-center distance; the epsilon neuron wins exactly when it "
    "exceeds -eps, so the curve is the sweep over eps. Rejection decisions at the calibrated "
    "eps are read from ONNX Runtime (epsilon activation above every center's).",
    "- Distance matters most: l1 separates the dense L-infinity perturbations best (a change "
    "of b on all 64 pixels adds up to 64 b in l1 but only 8 b in l2); cosine fails the target "
    "for PGD in every setting tried.",
    "- Temperature matters next. At onnxplain's auto temperature (tau x1) PGD run to the full "
    "budget keeps lowering the true class's share after the flip and ends close to one "
    "training digit of the wrong class, i.e. close to a center, where distance-based "
    "rejection cannot see it (sweep: ~0.5 rejected for l1, ~0.2 for l2 and cosine). With a "
    "hotter softmax the class share is a soft vote of many centers and the same attack ends "
    "at blends of several wrong-class digits, far from each of them (our reading of the "
    "numbers, not a proof). The hotter models are also slightly less accurate and harder to "
    "flip at small budgets.",
    "- The sweep picks the largest temperature tried that keeps held-out accuracy >= 0.95; "
    "the best configuration sits on the edge of the grid.",
    "- The adaptive attacks show the limit: weighting the 'stay unrejected' term by 20 lowers "
    "the rejection of its successful examples and turns more correct inputs into accepted "
    "errors. These are first-order attacks with one loss; stronger adaptive attacks may do "
    "better, so the numbers are not a robustness guarantee.",
]


def main(out_dir: Path | str = RESULTS, small: bool = False) -> dict:
    s = SMALL if small else Settings()
    s = replace(s, extra={"notes": NOTES})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(s.seed)
    sweep_rows = sweep(splits, s) if not s.fixed else []
    config = s.fixed or choose(sweep_rows, s.sweep_min_accuracy)
    layer = build(config, splits, s.seed)
    test_x, test_y = splits.test_x, splits.test_y
    if s.test_limit:
        test_x, test_y = test_x[:s.test_limit], test_y[:s.test_limit]
    result = evaluate(layer, test_x, test_y, splits.cal_x, s, s.budgets, s.attacks,
                      keep_examples=True)
    noise = noise_rejection(result["deployed"], s.noise_samples, s.seed)
    pngs = {}
    for name in s.attacks:
        curves = []
        for budget in s.budgets:
            row = result["attacks"][(name, budget)]
            if row["count"]:
                fpr, tpr = rejection_curve(result["clean_scores"], row["scores"])
                curves.append((f"budget {budget}: AUROC {row['auroc']:.3f}, n={row['count']}",
                               fpr, tpr))
        if curves:
            pngs[f"roc {name}"] = plot_curves(curves, f"{name}: {config.label()}",
                                              out / f"digits_roc_{name.replace(':', '_w')}.png")
    strongest = ("pgd", max(s.budgets))
    if result["attacks"][strongest]["count"]:
        pngs["examples"] = example_strip(result, *strongest, out / "digits_examples.png")
    write_report(out / "digits_rejection.md", s, config, result, noise, sweep_rows, pngs,
                 splits)
    return {"settings": s, "config": config, "splits": splits, "result": result,
            "noise_rejection": noise, "sweep": sweep_rows, "test_x": test_x,
            "test_y": test_y}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(RESULTS), help="folder for the report and PNGs")
    parser.add_argument("--small", action="store_true", help="a quick, reduced run")
    args = parser.parse_args()
    main(args.out, args.small)
