"""Explain whole datasets: `explain_dataset` reads a folder of images, .npy/.npz shards or
Parquet files in batches, explains them, and writes Parquet result shards that a stopped run
resumes (run.py; reading: sources.py and parquet_source.py, writing: results.py)."""

from .run import explain_dataset

__all__ = ["explain_dataset"]
