"""The result of an explanation: attributions per input, plus what was explained and how."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .objective import describe_objective


@dataclass
class Attribution:
    """Attributions per model input, with the metadata needed to read them.

    `attributions[name]` has the shape of input `name`; for token-id inputs it holds one
    value per token (the embedding attribution summed over the embedding axis), and
    `tensors[source]` keeps the full attribution at the tensor where it was taken.
    """

    method: str
    attributions: dict[str, np.ndarray]
    tensors: dict[str, np.ndarray]
    sources: dict[str, str]
    output: str
    target: np.ndarray
    predicted: np.ndarray | None
    predicted_score: np.ndarray | None
    target_score: np.ndarray | None
    providers: list[str]
    runtime_s: float
    options: dict = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # What was differentiated: "class" (the target logit of each row), "output_seed"
    # (sum of seed * output) or "sum" (outputs with one value per row).
    objective: str = "class"
    # Method-specific results: convergence deltas, the layer a layer method used, ...
    extras: dict = field(default_factory=dict)
    signed: bool = True
    # Dense objectives (objective.DENSE): the weights resolved on the clean run, so that
    # metrics score perturbed inputs with the same objective; not part of the summary.
    seed: np.ndarray | None = field(default=None, repr=False)
    # explainer.unreadable_rows of the attributions: per kind, a bool mask of the rows whose
    # map is no explanation (each warned about when explained).
    unreadable: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.attributions[name]

    def __iter__(self):
        return iter(self.attributions)

    def __len__(self) -> int:
        return len(self.attributions)

    @property
    def explained(self) -> str:
        """One sentence: what was explained (objective), with the place it was read at."""
        return describe_objective(self.objective, self.output,
                                  self.extras.get("explained_place", ""))

    @property
    def first(self) -> np.ndarray:
        """The attribution of the first attributed input (the only one for most models)."""
        return next(iter(self.attributions.values()))

    def summary(self) -> dict:
        """JSON-ready description: what was explained, the prediction, runtime, statistics."""
        return {
            "method": self.method,
            "options": _jsonable(self.options),
            "output": self.output,
            "objective": self.objective,
            "explained": self.explained,
            "signed": self.signed,
            "target": self.target.tolist(),
            "predicted_class": None if self.predicted is None else self.predicted.tolist(),
            "predicted_score": _floats(self.predicted_score),
            "target_score": _floats(self.target_score),
            "runtime_s": round(self.runtime_s, 6),
            "execution_providers": list(self.providers),
            "execution_provider": self.providers[0] if self.providers else None,
            "inputs": {name: {"source": self.sources.get(name, name),
                              "shape": list(values.shape),
                              "statistics": statistics(values)}
                       for name, values in self.attributions.items()},
            "extras": _jsonable(self.extras),
            "notes": list(self.notes),
        }


def statistics(values: np.ndarray) -> dict:
    """Per-input numbers a reader needs to judge a heatmap: range, mass, sign balance."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        return {}
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        return {"nonfinite": int(flat.size)}
    return {
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "abs_mean": float(np.abs(finite).mean()),
        "sum": float(finite.sum()),
        "l2_norm": float(np.sqrt(np.square(finite).sum())),
        "positive_fraction": float((finite > 0).mean()),
        "nonfinite": int(flat.size - finite.size),
    }


def _floats(values: np.ndarray | None) -> list[float | None] | None:
    """Plain floats for JSON, None where the model produced NaN or Inf."""
    if values is None:
        return None
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values).reshape(-1)]


def _jsonable(options: dict) -> dict:
    """Plain values for JSON; arrays of more than a few dozen numbers are described, not
    written out (a baseline image does not belong in a summary)."""
    out = {}
    for key, value in options.items():
        if isinstance(value, np.ndarray):
            value = (_floats(value) if value.dtype.kind == "f" else value.tolist()) \
                if value.size <= 64 else f"array of shape {list(value.shape)}"
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out
