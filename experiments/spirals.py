"""Two interleaved spirals: local neurons in 2-D (Sapkota's figures 3, 4 and 5).

(a) A local classifier initialised from data, drawn as the region where each neuron is the
    most active and as class regions, without the epsilon neuron (eps = -inf), with it, with a
    higher temperature and with a higher epsilon.
(b) A local residual layer whose values shift each center to a class-dependent point, drawn as
    its shift field: the centers with their shift arrows and the points before and after.

Every number and picture comes from ONNX Runtime running the exported `.to_onnx()` model.

    .venv/bin/python experiments/spirals.py [--out experiments/results] [--small]
"""

from __future__ import annotations

import argparse
import colorsys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

from onnxplain.local import (
    LocalLayer,
    LocalNetwork,
    calibrate_epsilon,
    classifier_from_data,
    mlp_from_data,
)

RESULTS = Path(__file__).resolve().parent / "results"
EXTENT = 1.6            # the grid spans [-EXTENT, EXTENT]^2; the spirals reach radius ~1
EPSILON_MARGIN = 1.25   # eps threshold = this times the farthest training point's distance
HOT_TEMPERATURE = 20.0  # the "increased temperature" variant multiplies tau by this
HIGH_EPSILON = 0.5      # the "higher epsilon" variant: threshold at half the distance
CLASS_HUES = (0.58, 0.05)  # blue-ish and orange-ish
TARGETS = np.array([[-0.8, 0.0], [0.8, 0.0]], np.float32)  # a point per class
PULL = 0.7  # residual targets: this far from each point towards its class's point


@dataclass
class Settings:
    points: int = 200       # per class
    centers: int = 60       # classifier centers
    residual_centers: int = 120
    noise: float = 0.03
    grid: int = 200         # pixels per side of a panel
    seed: int = 0


SMALL = Settings(points=60, centers=24, residual_centers=40, grid=48)


# -- data and models -------------------------------------------------------------------------

def two_spirals(per_class: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals of radius <= 1: class 1 is class 0 rotated by pi."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.02, 1.0, per_class)) * 3 * np.pi  # sqrt: even density along arc
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    x = np.concatenate([arm, -arm]) + noise * rng.standard_normal((2 * per_class, 2))
    y = np.repeat([0, 1], per_class)
    return x.astype(np.float32), y.astype(np.int64)


def session(layer: LocalLayer) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    model = LocalNetwork([layer]).to_onnx()
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run_onnx(layer: LocalLayer, x: np.ndarray) -> dict[str, np.ndarray]:
    """output, activations [N, K] and epsilon [N] of the exported model."""
    names = ["output", "layer0/activations", "layer0/epsilon"]
    values = session(layer).run(names, {"x": np.asarray(x, np.float32)})
    return dict(zip(("output", "activations", "epsilon"), values, strict=True))


def grid_points(size: int) -> np.ndarray:
    """Pixel centers, row-major with y pointing up."""
    axis = (np.arange(size) + 0.5) / size * 2 * EXTENT - EXTENT
    xs, ys = np.meshgrid(axis, axis[::-1])
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def winners(result: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(index of the most active neuron, K meaning the epsilon neuron; its activation)."""
    full = np.concatenate([result["activations"], result["epsilon"][:, None]], axis=1)
    return full.argmax(1), full.max(1)


# -- drawing ---------------------------------------------------------------------------------

def to_pixel(points: np.ndarray, size: int) -> np.ndarray:
    return np.stack([(points[:, 0] + EXTENT) / (2 * EXTENT) * size,
                     (EXTENT - points[:, 1]) / (2 * EXTENT) * size], axis=1)


def neuron_colors(labels: np.ndarray) -> np.ndarray:
    """A distinct colour per neuron, its hue near its class's hue so classes stay readable;
    the last row (epsilon neuron) is dark grey."""
    rng = np.random.default_rng(1)
    rows = []
    for label in labels:
        hue = (CLASS_HUES[int(label) % 2] + rng.uniform(-0.07, 0.07)) % 1.0
        rows.append(colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 1.0), rng.uniform(0.65, 1.0)))
    rows.append((0.15, 0.15, 0.15))
    return (np.array(rows) * 255).astype(np.float64)


def region_panel(index: np.ndarray, strength: np.ndarray, palette: np.ndarray, size: int,
                 shade: bool) -> Image.Image:
    """Colour each pixel by the winning neuron; with shade, brightness = its activation."""
    rgb = palette[index]
    if shade:
        rgb = rgb * (0.25 + 0.75 * strength[:, None])
    return Image.fromarray(rgb.reshape(size, size, 3).clip(0, 255).astype(np.uint8))


def mark_points(image: Image.Image, x: np.ndarray, y: np.ndarray, centers: np.ndarray) -> None:
    draw, size = ImageDraw.Draw(image), image.size[0]
    for (px, py), label in zip(to_pixel(x, size), y, strict=True):
        fill = (255, 255, 255) if label == 0 else (0, 0, 0)
        draw.point((px, py), fill=fill)
    for px, py in to_pixel(centers, size):
        draw.line((px - 3, py - 3, px + 3, py + 3), fill=(255, 255, 0))
        draw.line((px - 3, py + 3, px + 3, py - 3), fill=(255, 255, 0))


def titled(panels: list[tuple[str, Image.Image]], columns: int) -> Image.Image:
    """Panels on a grid with a caption line above each."""
    width, height = panels[0][1].size
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (columns * (width + 6), rows * (height + 20)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (title, panel) in enumerate(panels):
        left, top = (i % columns) * (width + 6), (i // columns) * (height + 20)
        draw.text((left + 2, top + 4), title, fill=(0, 0, 0))
        sheet.paste(panel, (left, top + 18))
    return sheet


def save_png(image: Image.Image, path: Path) -> str:
    image.save(path, optimize=True)
    return path.name


# -- (a) the classifier ----------------------------------------------------------------------

def classifier_variants(layer: LocalLayer, train_x: np.ndarray) -> dict[str, LocalLayer]:
    """The seed's figure 3 settings, from one data-initialised classifier."""
    eps = EPSILON_MARGIN * calibrate_epsilon(layer, train_x, reject_rate=0.0)
    return {
        "no_epsilon": replace(layer, epsilon=float("-inf")),
        "epsilon": replace(layer, epsilon=eps),
        "hot_no_epsilon": replace(layer, temperature=HOT_TEMPERATURE * layer.temperature,
                                  epsilon=float("-inf")),
        "hot_epsilon": replace(layer, temperature=HOT_TEMPERATURE * layer.temperature,
                               epsilon=eps),
        "high_epsilon": replace(layer, epsilon=HIGH_EPSILON * eps),
    }


def classifier_experiment(s: Settings, out: Path, x: np.ndarray, y: np.ndarray) -> dict:
    base = classifier_from_data(x, y, s.centers, method="stratified", seed=s.seed)
    variants = classifier_variants(base, x)
    grid = grid_points(s.grid)
    far = np.array([[EXTENT, EXTENT], [-EXTENT, EXTENT], [EXTENT, -EXTENT],
                    [-EXTENT, -EXTENT], [0.0, EXTENT]], np.float32)
    palette = neuron_colors(base.labels)
    class_palette = np.array([colorsys.hsv_to_rgb(h, 0.8, 0.95) for h in CLASS_HUES]
                             + [(0.15, 0.15, 0.15)]) * 255
    neuron_panels, class_panels, stats = [], [], {}
    for name, layer in variants.items():
        on_grid, on_train, on_far = (run_onnx(layer, p) for p in (grid, x, far))
        index, strength = winners(on_grid)
        classes = np.where(index == layer.size, 2, on_grid["output"].argmax(1))
        train_index, _ = winners(on_train)
        stats[name] = {
            "layer": layer,
            "temperature": layer.temperature, "epsilon": layer.epsilon,
            "train_accuracy": float((on_train["output"].argmax(1) == y).mean()),
            "train_rejected": float((train_index == layer.size).mean()),
            "grid_rejected": float((index == layer.size).mean()),
            "far_rejected": float((winners(on_far)[0] == layer.size).mean()),
            "max_abs_diff_vs_numpy": float(np.abs(on_grid["output"]
                                                  - layer.forward(grid)).max()),
        }
        label = f"{name} (tau={layer.temperature:.3g}, eps={layer.epsilon:.3g})"
        panel = region_panel(index, strength, palette, s.grid, shade=True)
        mark_points(panel, x, y, layer.centers)
        neuron_panels.append((label, panel))
        panel = region_panel(classes, strength, class_palette, s.grid, shade=False)
        mark_points(panel, x, y, layer.centers)
        class_panels.append((label, panel))
    stats["png_neurons"] = save_png(titled(neuron_panels, 3), out / "spirals_neurons.png")
    stats["png_classes"] = save_png(titled(class_panels, 3), out / "spirals_classes.png")
    return stats


# -- (b) the residual layer ------------------------------------------------------------------

def linear_accuracy(points: np.ndarray, y: np.ndarray) -> float:
    """Training accuracy of a least-squares linear classifier (+-1 targets, with a bias)."""
    design = np.concatenate([points, np.ones((len(points), 1))], axis=1).astype(np.float64)
    weights, *_ = np.linalg.lstsq(design, np.where(y == 1, 1.0, -1.0), rcond=None)
    return float(((design @ weights > 0) == (y == 1)).mean())


def residual_experiment(s: Settings, out: Path, x: np.ndarray, y: np.ndarray) -> dict:
    # Part of the way only, so the shift field stays readable and points keep their layout.
    targets = (1 - PULL) * x + PULL * TARGETS[y]
    base = mlp_from_data(x, targets, s.residual_centers, residual=True, method="kmeans++",
                         labels=y, seed=s.seed)
    layer = replace(base, epsilon=EPSILON_MARGIN * calibrate_epsilon(base, x, 0.0))
    moved = run_onnx(layer, x)["output"]
    stats = {
        "layer": layer, "moved": moved,
        "temperature": layer.temperature, "epsilon": layer.epsilon,
        "linear_accuracy_before": linear_accuracy(x, y),
        "linear_accuracy_after": linear_accuracy(moved, y),
        "max_abs_diff_vs_numpy": float(np.abs(moved - layer.forward(x)).max()),
    }
    size = 2 * s.grid
    scale = size / 2 / EXTENT
    before, after = Image.new("RGB", (size, size), "white"), Image.new("RGB", (size, size),
                                                                        "white")
    colours = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.8, 0.9))
               for h in CLASS_HUES]
    db, da = ImageDraw.Draw(before), ImageDraw.Draw(after)
    for p, q, label in zip(to_pixel(x, size), to_pixel(moved, size), y, strict=True):
        db.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colours[label])
        da.line((*p, *q), fill=(215, 215, 215))       # where each point came from
        da.ellipse((q[0] - 2, q[1] - 2, q[0] + 2, q[1] + 2), fill=colours[label])
    shifts = layer.values[:-1]
    for c, v, label in zip(to_pixel(layer.centers, size), shifts, layer.labels, strict=True):
        tip = c + scale * v * np.array([1, -1])
        db.line((*c, *tip), fill=(60, 60, 60))        # the center's shift
        db.ellipse((tip[0] - 1.5, tip[1] - 1.5, tip[0] + 1.5, tip[1] + 1.5), fill=(60, 60, 60))
        db.line((c[0] - 3, c[1] - 3, c[0] + 3, c[1] + 3), fill=colours[label])
        db.line((c[0] - 3, c[1] + 3, c[0] + 3, c[1] - 3), fill=colours[label])
    # The epsilon neuron's shift is its value row (zero): far points stay where they are.
    stats["png"] = save_png(titled([
        ("input space: centers (x) and their shifts", before),
        (f"after the residual layer (linear acc {stats['linear_accuracy_after']:.3f})",
         after)], 2), out / "spirals_residual.png")
    return stats


# -- report ----------------------------------------------------------------------------------

def report(s: Settings, a: dict, b: dict, path: Path) -> None:
    lines = ["# Two spirals: local neurons with and without the epsilon neuron", "",
             f"Settings: {s}. All numbers come from ONNX Runtime running the exported "
             "`LocalNetwork([...]).to_onnx()` model (checked against the numpy reference).",
             "", "## (a) Local classifier initialised from data (figures 3 and 5)", "",
             f"{s.centers} centers drawn from the training points (stratified), values their "
             f"one-hot classes, temperature auto. Epsilon: {EPSILON_MARGIN} times the "
             "largest nearest-center distance of a training point (so no training point is "
             f"rejected); 'high_epsilon' uses {HIGH_EPSILON} of that threshold, 'hot' "
             f"multiplies the temperature by {HOT_TEMPERATURE}.", "",
             "| variant | tau | eps | train acc | train rejected | grid rejected | "
             "far corners rejected | max abs ORT - numpy |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("no_epsilon", "epsilon", "hot_no_epsilon", "hot_epsilon", "high_epsilon"):
        r = a[name]
        lines.append(f"| {name} | {r['temperature']:.4g} | {r['epsilon']:.4g} | "
                     f"{r['train_accuracy']:.3f} | {r['train_rejected']:.3f} | "
                     f"{r['grid_rejected']:.3f} | {r['far_rejected']:.2f} | "
                     f"{r['max_abs_diff_vs_numpy']:.1e} |")
    lines += ["", "Most active neuron (colour per neuron, hue by its class, brightness = its "
              "activation; dark grey = epsilon neuron; yellow x = centers, white/black dots = "
              "class 0/1 points):", "", f"![neurons]({a['png_neurons']})", "",
              "Class regions (grey = rejected by the epsilon neuron):", "",
              f"![classes]({a['png_classes']})", "",
              "Without the epsilon neuron every pixel of the plane belongs to some neuron, "
              "and the neurons on the outside of the spirals own unbounded wedges where they "
              "stay fully active far from any data. With it, those regions go to the epsilon "
              "neuron while every training point keeps its class. A higher temperature blurs "
              "the activations (lower peaks, neighbouring centers of the other class vote in, "
              "so training accuracy drops) but cannot move the epsilon boundary: whether the "
              "epsilon neuron wins compares -d with eps and does not depend on tau. A higher "
              "epsilon shrinks the accepted region to tubes around the data and starts "
              "rejecting training points.", "",
              "## (b) Local residual layer (figure 4)", "",
              f"{s.residual_centers} centers (k-means++ over the points), values = target - "
              f"center, each target {PULL} of the way from the point to {TARGETS[0].tolist()} "
              f"(class 0) or {TARGETS[1].tolist()} (class 1); tau = {b['temperature']:.4g}, "
              f"eps = {b['epsilon']:.4g}.", "",
              "| | linear least-squares accuracy |", "|---|---|",
              f"| input points | {b['linear_accuracy_before']:.3f} |",
              f"| after Y = x + [A, e] V | {b['linear_accuracy_after']:.3f} |", "",
              f"Max abs difference ORT - numpy: {b['max_abs_diff_vs_numpy']:.1e}.", "",
              f"![residual]({b['png']})", "",
              "Left: the centers (x) and their shift arrows. Right: every point after the "
              "layer, with a grey line back to where it started; the epsilon neuron's shift "
              "is zero, so inputs far from every center are left in place.", ""]
    path.write_text("\n".join(lines))


def main(out_dir: Path | str = RESULTS, small: bool = False) -> dict:
    s = SMALL if small else Settings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x, y = two_spirals(s.points, s.noise, s.seed)
    a = classifier_experiment(s, out, x, y)
    b = residual_experiment(s, out, x, y)
    report(s, a, b, out / "spirals.md")
    return {"x": x, "y": y, "classifier": a, "residual": b, "settings": s}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(RESULTS), help="folder for the report and PNGs")
    parser.add_argument("--small", action="store_true", help="a quick, reduced run")
    args = parser.parse_args()
    main(args.out, args.small)
