"""What flows through a dataset run (onnxplain.dataset): batches of input rows read from a
source, the rows that could not be read, and one result per explained row."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Batch:
    """Input rows ready for Explainer.explain: `feeds` by model input name, [rows, ...] each;
    per row its stable id (the same in every run over the same source: what resume skips),
    where it came from (a file, or a file and its row) and its label where the source has
    one (an image's class folder), else None."""

    ids: list[str]
    sources: list[str]
    labels: list[str | None]
    feeds: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class RowError:
    """A row that was not explained: its id, where it came from, and why in one line (an
    unreadable image, a wrong shape, NaN values, or the method's own refusal)."""

    id: str
    source: str
    reason: str


@dataclass
class RowResult:
    """One explained row: its id, source and label (as the Batch gave them), the class
    explained (`target`), the predicted class and its score, the attribution of each
    attributed input (one row, without the batch axis) and the completeness gap where the
    method reports one (IG, DeepLIFT: extras['convergence_delta']), `note` where the map is
    no explanation (explainer.unreadable_rows: "not finite", "all zero", "constant"), and
    whether the method's maps are signed (Attribution.signed: how maps reduce and draw)."""

    id: str
    source: str
    label: str | None
    target: int | None
    predicted: int | None
    score: float | None
    attributions: dict[str, np.ndarray]
    delta: float | None = None
    note: str | None = None
    signed: bool = True


@dataclass
class Explained:
    """What explaining some rows gave, on whichever machine: their results, the rows that
    failed (unreadable or refused), and each warning text with its count."""

    results: list[RowResult]
    errors: list[RowError]
    warnings: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.results) + len(self.errors)
