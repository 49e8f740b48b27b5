"""`onnxplain local-head`: fit an epsilon-softmax head that rejects unfamiliar inputs,
evaluate it, and explain its decisions by prototypes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np

from onnxplain.errors import InputError
from onnxplain.files import save_bytes

from .errors import friendly
from .input_files import read_inputs
from .options import provider_option, quiet_option

LABEL_KEYS = ("y", "labels", "label", "target", "targets")


@click.group("local-head")
def local_head() -> None:
    """Local classifier heads with an epsilon neuron: out-of-distribution rejection."""


def _epsilon(text: str):
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--epsilon '{text}' is neither 'auto' nor a number") from None


def _temperature(text: str):
    value = _epsilon(text)
    return value


@local_head.command("fit")
@click.argument("model")
@click.option("--layer", default="auto", show_default=True, help="tensor (or node) whose "
              "features the head reads; 'auto' scores the candidate layers (those `onnxplain "
              "inspect` lists, and the inputs of the last dense layers) on the fitting rows")
@click.option("--data", required=True, metavar="FILE.npz", help="training inputs by input "
              "name (or one array), and labels under 'y' (default: the model's predictions)")
@click.option("-o", "--out", "out", required=True, metavar="FILE.onnx",
              help="where to write the model with its head")
@click.option("--epsilon", default="auto", show_default=True, help="'auto' (calibrated on "
              "held-out rows to --reject-rate) or a number")
@click.option("--reject-rate", type=click.FloatRange(0, 1, max_open=True), default=0.05,
              show_default=True, help="share of clean held-out rows to reject")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.2,
              show_default=True, help="share of rows held out to calibrate epsilon (without "
              "--calibration-data)")
@click.option("--calibration-data", metavar="FILE.npz", default=None,
              help="inputs the model did not train on, to calibrate epsilon on (rows it "
              "trained on make the head reject more new data than --reject-rate)")
@click.option("--per-class", type=click.IntRange(min=1), default=None,
              help="centers drawn from each class [default: every fitting row, up to 2^24 "
              "center values (centers x features) and 20000 centers]")
@click.option("--distance", type=click.Choice(["l2", "squared_l2", "l1", "cosine"]),
              default="l2", show_default=True)
@click.option("--temperature", default="auto", show_default=True,
              help="'auto' (a tenth of the typical nearest-center distance) or a number")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="prototypes reported per row")
@click.option("--seed", type=int, default=0, show_default=True)
@provider_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@quiet_option
@friendly
def fit(model: str, layer: str, data: str, out: str, epsilon: str, reject_rate: float,
        holdout: float, calibration_data: str | None, per_class: int | None, distance: str,
        temperature: str, top: int, seed: int, provider: str, as_json: bool,
        quiet: bool) -> None:
    """Fit a local classifier on MODEL's features at --layer and write MODEL plus the head."""
    from onnxplain.graph.model import Model
    from onnxplain.local.head import fit_local_head

    refuse_inputs(out, [model, data, *([calibration_data] if calibration_data else [])])
    loaded = Model.load(model)
    inputs, labels = read_data(loaded, data)
    calibration = read_data(loaded, calibration_data)[0] if calibration_data else None
    head = fit_local_head(loaded, layer, inputs, labels, per_class=per_class,
                          distance=distance, temperature=_temperature(temperature),
                          epsilon=_epsilon(epsilon), reject_rate=reject_rate, holdout=holdout,
                          top=top, seed=seed, providers=provider,
                          progress=not (quiet or as_json), calibration=calibration)
    write_model(head.model, out)
    summary = {key: value for key, value in head.info.items() if key not in ("sources",
                                                                            "labels")}
    summary["written"] = out
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        _print_fit(summary, distance, bool(calibration_data))


def _print_fit(summary: dict, distance: str, calibration_data: bool) -> None:
    choice = summary["layer_choice"]
    if choice:
        click.echo("layer scores (leave-one-out nearest-neighbour agreement):")
        for entry in choice["candidates"]:
            mark = "*" if entry["layer"] == choice["chosen"] else " "
            click.echo(f"  {mark} {entry['agreement']:.3f}  {entry['layer']} "
                       f"({entry['features']} features)")
        click.echo(f"  chose '{choice['chosen']}': {choice['why']}")
    click.echo(f"fitted a local head on '{summary['layer']}': {summary['centers']} centers "
               f"({summary['centers_from']}; {summary['classes']} classes, labels from "
               f"{summary['labels_from']}), {summary['features']} features, {distance} "
               "distance")
    click.echo(f"  temperature {summary['temperature']:.4g}, epsilon {summary['epsilon']:.4g}"
               + (f" (calibrated on {summary['calibrated_on']})"
                  if summary["calibrated_on"] else ""))
    check = summary["calibration"]
    if check and check["rejected"] is not None:
        click.echo(f"  calibration, cross-validated on those rows: asked "
                   f"{percent(check['asked'])}, rejected {percent(check['rejected'])} "
                   f"(+- {percent(check['spread'])} over folds)")
    if summary["calibrated_on"] and not calibration_data:
        click.echo("  if the model trained on these rows, new data is rejected more often "
                   "than asked (`local-head evaluate` on test data measures it): "
                   "--calibration-data takes rows it did not see")
    click.echo(f"wrote {summary['written']} (outputs: "
               f"{', '.join(summary['outputs'].values())})")


@local_head.command("evaluate")
@click.argument("model")
@click.option("--data", required=True, metavar="FILE.npz",
              help="inputs, and labels under 'y' (default: the model's predictions)")
@provider_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@quiet_option
@friendly
def evaluate(model: str, data: str, provider: str, as_json: bool, quiet: bool) -> None:
    """Accuracy, rejection rate and the confusion of rejected inputs of a head model."""
    from onnxplain.graph.model import Model
    from onnxplain.local.report import evaluate_head

    loaded = Model.load(model)
    inputs, labels = read_data(loaded, data)
    result = evaluate_head(loaded, inputs, labels, providers=provider,
                           progress=not (quiet or as_json))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if quiet:
        return
    click.echo(f"{result['rows']} rows (truth: {result['truth']}), epsilon "
               f"{result['epsilon']:.4g}")
    asked = result["asked_rejection_rate"]
    click.echo(f"  rejected: {percent(result['rejection_rate'])}"
               + ("" if asked is None else
                  f" (calibrated to {percent(asked)}: "
                  f"{100 * result['calibration_error']:+.1f} points, "
                  f"{_ratio(result['rejection_rate'], asked)} the asked rate; on data like "
                  "the calibration rows, that is the calibration error)"))
    if "model_accuracy" in result:
        click.echo(f"  model accuracy: {percent(result['model_accuracy'])} on all rows, "
                   f"{percent(result['model_accuracy_accepted'])} on accepted rows")
    click.echo(f"  local classifier accuracy: {percent(result['local_accuracy'])} on all "
               f"rows, {percent(result['local_accuracy_accepted'])} on accepted rows")
    if "rejected" in result:
        rejected, accepted = result["rejected"], result["accepted"]
        click.echo("  confusion:        model right  model wrong")
        click.echo(f"    accepted        {accepted['model_right']:11d}  "
                   f"{accepted['model_wrong']:11d}")
        click.echo(f"    rejected        {rejected['model_right']:11d}  "
                   f"{rejected['model_wrong']:11d}")
    by_class = ", ".join(f"{k}: {v}" for k, v in result["rejected_by_class"].items())
    click.echo(f"  rejected rows by class: {by_class or 'none'}")


@local_head.command("explain")
@click.argument("model")
@click.option("-i", "--input", "inputs", multiple=True, required=True,
              help="FILE.npy, NAME=FILE.npy, or an .npz with arrays by input name")
@provider_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@quiet_option
@friendly
def explain(model: str, inputs: tuple[str, ...], provider: str, as_json: bool,
            quiet: bool) -> None:
    """Prototype explanation: the centers that fired most for each row, and the training
    rows they were drawn from."""
    from onnxplain.graph.model import Model
    from onnxplain.local.report import explain_prototypes

    loaded = Model.load(model)
    arrays, _ = read_inputs(loaded, inputs)
    rows = explain_prototypes(loaded, arrays, providers=provider)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if quiet:
        return
    for row in rows:
        verdict = "REJECTED" if row["rejected"] else f"class {row['predicted']}"
        click.echo(f"row {row['row']}: {verdict} (class share {row['probability']:.3f}, "
                   f"epsilon neuron {row['epsilon_activation']:.3f})")
        for proto in row["prototypes"]:
            click.echo(f"  center {proto['center']:5d}  activation {proto['activation']:.3f}"
                       f"  training row {proto['source_row']}  label {proto['label']}")


def read_data(model, path: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs and optional labels from one .npz (labels under y/labels/target)."""
    if not path.lower().endswith(".npz"):
        raise InputError(f"--data {path}: expected an .npz file with inputs and labels")
    arrays, _ = read_inputs(model, (path,))
    labels = None
    for key in LABEL_KEYS:
        if key in arrays and key not in {spec.name for spec in model.inputs}:
            labels = arrays.pop(key)
            break
    names = [spec.name for spec in model.inputs]
    if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays:
        arrays = {names[0]: next(iter(arrays.values()))}
    return arrays, labels


def refuse_inputs(out: str, protected: list[str]) -> None:
    if os.path.realpath(out) in {os.path.realpath(p) for p in protected}:
        raise InputError(f"refusing to overwrite {out}: it is one of your input files")
    if Path(out).is_dir():
        raise InputError(f"--out {out} is a folder; give a file name such as head.onnx")


def write_model(model, out: str) -> None:
    """Write atomically (onnxplain.files), so a failure never leaves half a model behind
    (nor a folder created for it)."""
    from .outputs import writing_into

    data = model.SerializeToString()
    with writing_into(Path(out).absolute().parent) as stage:
        save_bytes(stage.path / Path(out).name, data)


def percent(value) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"  # NaN: none


def _ratio(value: float, asked: float) -> str:
    return f"{value / asked:.2f}x" if asked else "n/a"
