"""`onnxplain explain-dataset`: explain every row of a folder of images, of .npy/.npz shards
or of Parquet files and write Parquet result shards (onnxplain.dataset)."""

from __future__ import annotations

import json

import click

from .errors import friendly
from .options import memory_budget_option, method_options, provider_option, quiet_option
from .presets import image_options


@click.command("explain-dataset")
@click.argument("model")
@click.option("--data", required=True, metavar="SOURCE",
              help="a folder of images (class sub-folders give labels), or .npy/.npz shards "
                   "or Parquet files (a file or a folder of them: one array or column per "
                   "model input, rows on axis 0; Parquet may add `id` and `label` columns)")
@click.option("-m", "--method", default="saliency", show_default=True,
              help="attribution method (see `onnxplain methods`)")
@click.option("-t", "--target", type=int, default=None,
              help="class explained in every row (default: each row's predicted class)")
@click.option("-O", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="method option (repeatable; each method's options: `onnxplain methods`)")
@click.option("-o", "--out", required=True, metavar="FOLDER",
              help="where results/part-*.parquet, errors.parquet and summary.json go")
@click.option("--resume", is_flag=True,
              help="continue a run stopped before its end: rows already written are skipped")
@click.option("--retry-errors", is_flag=True,
              help="with --resume: explain again the rows that failed (errors.parquet then "
                   "keeps only what still fails)")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="rows read and explained per run (default: 32 read at a time, run as the "
                   "memory budget allows)")
@click.option("--shard-rows", type=click.IntRange(min=1), default=256, show_default=True,
              help="rows per Parquet shard (a stopped run loses at most the shard in flight)")
@click.option("--store", default="full", show_default=True, metavar="full|map|topk=K",
              help="what each row keeps of its attribution: full, map (summed over an "
                   "image's channels, as the heatmaps draw it) or topk=K (the K entries of "
                   "largest |value|: flat indices and signed values)")
@click.option("--vocab", default=None, metavar="FILE",
              help="turns Parquet text columns into token ids: vocab.txt, vocab.json or "
                   "tokenizer.json (each whitespace-separated word one token)")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              show_default=True,
              help="local: this process; ray: Ray workers, each with its own ONNX Runtime "
                   "session (pip install 'onnxplain[ray]')")
@click.option("--address", default=None, metavar="ADDR",
              help="the Ray cluster to run on (default: a local Ray instance started for "
                   "the run); --engine ray only")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray workers (default: one per 4 CPUs of the cluster; each gets the "
                   "cluster's CPUs shared out evenly as ONNX Runtime threads)")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0,
              help="GPUs Ray gives each worker, which then runs on CUDA")
@provider_option
@memory_budget_option
@click.option("--json", "as_json", is_flag=True, help="print summary.json to stdout")
@quiet_option
@image_options
@friendly
def explain_dataset(model: str, data: str, method: str, target: int | None,
                    options: tuple[str, ...], out: str, resume: bool, retry_errors: bool,
                    batch_size: int | None,
                    shard_rows: int, store: str, vocab: str | None, engine: str,
                    address: str | None, workers: int | None, gpus_per_worker: float,
                    provider: str, memory_budget_mb: float, as_json: bool,
                    quiet: bool, image_settings) -> None:
    """Explain every row of --data with MODEL; write Parquet results under --out. The exit
    code is 1 when some rows could not be explained (errors.parquet says why)."""
    from onnxplain.dataset import explain_dataset as run
    from onnxplain.graph.model import Model
    from onnxplain.images import image_inputs

    from .presets import preprocessing_for, read_config

    loaded = Model.load(model)
    # Image settings given, or a preset saved next to the model: the images are read so
    # (array shards refuse them); else each image input's default, from its shape.
    chosen = image_settings is not None and (image_settings.preset or image_settings.overrides
                                             or image_settings.save_as)
    preprocessing = None
    if chosen or read_config(loaded.path).get("default"):
        preprocessing = {name: preprocessing_for(loaded, loaded.input(name), image_settings).prep
                         for name in image_inputs(loaded)}
    summary = run(loaded, data, out, method, target=target, resume=resume,
                  retry_errors=retry_errors,
                  batch_size=batch_size, shard_rows=shard_rows, preprocessing=preprocessing,
                  providers=provider, memory_budget_mb=memory_budget_mb,
                  progress=not (quiet or as_json), store=store, vocab=vocab, engine=engine,
                  address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                  **method_options(options, [model, data]))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        click.echo(f"{summary['method']}: {summary['explained']} rows explained, "
                   f"{summary['errors']} errors, {summary['skipped']} already written"
                   + (f", {summary['retried']} retried" if summary["retried"] else "") + " "
                   f"({summary['seconds']:.1f} s, {summary['rows_per_second']} rows/s); "
                   f"results in {out}/")
    for kind, count in summary["unreadable"].items():  # no explanation: never silent
        click.echo(f"warning: {count} rows have attributions that are {kind}, so their maps "
                   "are no explanation (the `note` column names them)", err=True)
    if summary["errors"]:
        raise SystemExit(1)
