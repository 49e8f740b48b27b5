"""Explain whole datasets: `explain_dataset` reads a folder of images or .npy/.npz shards
in batches, explains them, and writes Parquet result shards that a stopped run resumes
(run.py; reading: sources.py, writing: results.py)."""

from .run import explain_dataset

__all__ = ["explain_dataset"]
