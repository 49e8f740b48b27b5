"""`onnxplain probe`: fit decoders that reconstruct a model's input from its layers, write
them with the model as one ONNX file, and show what each layer still knows of an input."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxplain.errors import InputError

from .errors import friendly
from .input_files import read_inputs
from .local_head import LABEL_KEYS, percent, read_data, refuse_inputs, write_model
from .options import provider_option, quiet_option

MAX_PICTURES = 64  # rows drawn; probe.npz and summary.json keep every row


@click.group("probe")
def probe() -> None:
    """Decoder probes: what of the input each layer can still reconstruct."""


@probe.command("fit")
@click.argument("model")
@click.option("--layer", "layers", multiple=True, required=True,
              help="tensor (or node) whose activations are decoded (repeatable)")
@click.option("--data", required=True, metavar="FILE.npz", help="training inputs by input "
              "name (or one array), and labels under 'y' (for --classifier-weight; default: "
              "the model's predictions)")
@click.option("-o", "--out", "out", required=True, metavar="FILE.onnx",
              help="where to write the probe (the model plus its decoders)")
@click.option("--decoder", type=click.Choice(["auto", "linear", "conv"]), default="auto",
              show_default=True, help="auto: from spatial layers to images, conv and linear both, "
              "the one with the lower held-out error kept; else linear")
@click.option("--classifier-weight", type=click.FloatRange(min=0), default=None,
              help="weight of the model's loss on the reconstruction beside the "
                   "reconstruction loss (the paper's classifier-aware decoder; default 0)")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="training epochs (default: the library's)")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="rows per training step (default: the library's)")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="learning rate (default: the library's)")
@click.option("--ridge", type=click.FloatRange(min=0), default=None,
              help="L2 penalty of the linear decoders' weights (conv decoders are not "
                   "penalised; default: the library's)")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="share of rows held out to report the reconstruction error on")
@click.option("--seed", type=int, default=None, help="seed of the split and initial weights")
@click.option("--target", default=None, metavar="INPUT",
              help="the model input to reconstruct, for models with several float or token "
                   "inputs (default: the first, in input order, that the layer is computed "
                   "from; token ids are rebuilt as their embeddings)")
@provider_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@quiet_option
@friendly
def fit(model: str, layers: tuple[str, ...], data: str, out: str, decoder: str,
        classifier_weight: float | None, epochs: int | None, batch_size: int | None,
        lr: float | None, ridge: float | None, holdout: float | None, seed: int | None,
        target: str | None, provider: str, as_json: bool, quiet: bool) -> None:
    """Train a decoder from each --layer of MODEL back to its input; write MODEL plus the
    decoders as one ONNX file (outputs probe/K/reconstruction, error, prediction, and for
    token models tokens: the nearest token id per position)."""
    from onnxplain.graph.model import Model
    from onnxplain.probe.fit import fit_probe
    from onnxplain.probe.model import load_probe, probe_model
    from onnxplain.viz.report_files import jsonable

    refuse_inputs(out, [model, data])
    loaded = Model.load(model)
    inputs, labels = read_data(loaded, data)
    given = {"classifier_weight": classifier_weight, "epochs": epochs,
             "batch_size": batch_size, "lr": lr, "ridge": ridge, "holdout": holdout,
             "seed": seed}
    fitted = fit_probe(loaded, list(layers), inputs, decoder=decoder, labels=labels,
                       providers=provider, target=target,
                       **{key: value for key, value in given.items() if value is not None})
    proto = probe_model(loaded, fitted)
    write_model(proto, out)
    summary = {"written": out, "layers": [  # the outputs as the written file declares them
        {"index": layer.index, "layer": layer.layer, "target": layer.target,
         "kind": layer.kind, "outputs": layer.outputs} for layer in load_probe(proto).layers],
        "info": fitted.info}
    if as_json:
        click.echo(json.dumps(jsonable(summary), indent=2))
    elif not quiet:
        for entry in summary["layers"]:
            click.echo(f"layer {entry['index']} '{entry['layer']}': {entry['kind']} decoder to "
                       f"'{entry['target']}'")
            for line in _numbers(fitted.info, entry["layer"]):
                click.echo(f"  {line}")
        click.echo(f"wrote {out}: run 'onnxplain probe explain {out} --input X --out DIR'")


@probe.command("explain")
@click.argument("probe_file", metavar="PROBE")
@click.option("-i", "--input", "inputs", multiple=True, required=True,
              help="FILE.npy, NAME=FILE.npy, or an .npz with arrays by input name (labels "
                   "under 'y' add the accuracy on reconstructions)")
@click.option("-o", "--out", required=True, metavar="DIR",
              help="folder for probe.npz, summary.json and probe_ROW.png; files an earlier "
                   "run wrote there and this one does not are removed")
@provider_option
@click.option("--json", "as_json", is_flag=True, help="print summary.json to stdout")
@quiet_option
@friendly
def explain(probe_file: str, inputs: tuple[str, ...], out: str, provider: str, as_json: bool,
            quiet: bool) -> None:
    """Reconstruct the inputs from every probed layer: per row and layer the reconstruction,
    its error per pixel, the class the model predicts on it; pictures across layers."""
    from onnxplain.graph.model import Model
    from onnxplain.probe.explain import explain_probe, fit_note
    from onnxplain.probe.model import load_probe

    from .outputs import prepare_folder

    loaded = load_probe(probe_file)
    model = Model.load(loaded.proto)
    arrays, labels, files = _read(model, inputs)
    folder = prepare_folder(out, [probe_file, *files])
    found = explain_probe(loaded, arrays, provider, labels=labels,
                          progress=not (quiet or as_json))
    summary = found.summary()
    written = _write(found, summary, folder, [probe_file, *files])
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    if quiet:
        return
    click.echo(f"{found.rows} rows, output '{found.probe.output}'"
               + (f", model accuracy {percent(summary['model_accuracy'])}"
                  if "model_accuracy" in summary else ""))
    for entry in summary["layers"]:
        parts = [f"mean error {entry['mean_error']:.4g}"]
        if "agreement" in entry:
            parts.append(f"class on reconstruction = class on input "
                         f"{percent(entry['agreement'])}")
        if "accuracy" in entry:
            parts.append(f"accuracy on reconstructions {percent(entry['accuracy'])}")
        if "token_accuracy" in entry:
            parts.append(_tokens(entry))
        if entry.get("no_better_than_mean"):
            parts.append(fit_note(entry))
        click.echo(f"  layer {entry['index']} '{entry['layer']}' ({entry['kind']}): "
                   + ", ".join(parts))
    click.echo(f"wrote {len(written)} files to {folder}/")


def _read(model, specs: tuple[str, ...]):
    """Arrays by input name, labels (an .npz's 'y', as --data holds them) and the files."""
    if len(specs) == 1 and specs[0].lower().endswith(".npz") and "=" not in specs[0]:
        arrays, labels = read_data(model, specs[0])
        return arrays, labels, [specs[0]]
    arrays, files = read_inputs(model, specs)
    names = {spec.name for spec in model.inputs}
    labels = next((arrays.pop(key) for key in LABEL_KEYS if key in arrays and key not in names),
                  None)
    return arrays, labels, files


def _write(found, summary: dict, folder: Path, protected: list[str]) -> list[str]:
    """probe.npz, summary.json and the pictures, all or nothing (writing_into); the files
    an earlier run listed in the folder's summary.json and this one does not write go."""
    import os

    from onnxplain.files import save_json, save_npz
    from onnxplain.viz.heatmap import save_png

    from .outputs import previous_files, stale_files, writing_into

    guard = {os.path.realpath(p) for p in protected}
    previous = previous_files(folder)  # an earlier run's files there, listed in its summary
    names: list[str] = []

    def target(stage, name: str) -> Path:
        if os.path.realpath(folder / name) in guard:
            raise InputError(f"refusing to overwrite {folder / name}: it is one of your "
                             "input files")
        names.append(name)
        return stage.path / name

    with writing_into(folder) as stage:
        save_npz(target(stage, "probe.npz"), found.arrays())
        for row in range(min(found.rows, MAX_PICTURES)):
            picture = found.picture(row)
            if picture is None:
                break
            save_png(picture, target(stage, f"probe_{row}.png"))
            summary["row_details"][row]["picture"] = f"probe_{row}.png"
        summary["method"] = "probe"  # outputs.previous_files reads summaries that name one
        summary["files"] = [*names, "summary.json"]
        save_json(target(stage, "summary.json"), summary)
        stage.drop.update(stale_files(folder, previous, summary["files"], guard))
    return [str(folder / name) for name in names]


def _numbers(info: dict, layer: str) -> list[str]:
    """The fit's errors for `layer`, one line each, on the held-out rows (else the training
    rows): the mean squared error and that over the target's variance (flagged when >= 1);
    the model's agreement with itself (and accuracy) on reconstructions; for token targets
    the nearest-token accuracy beside its chance baseline."""
    from onnxplain.probe.model import NO_BETTER, fit_errors, no_better_than_mean

    errors, rows = fit_errors(info, layer)
    lines = [", ".join(f"{label} {errors[key]:.4g}" for key, label in
                       (("mse", "mse"), ("relative_mse", "relative mse"))
                       if errors.get(key) is not None)]
    if no_better_than_mean(errors):
        lines[0] += f" ({NO_BETTER})"
    lines.append(", ".join(f"{label} {percent(errors[key])}" for key, label in
                           (("agreement", "same class on reconstructions"),
                            ("accuracy", "accuracy on reconstructions"))
                           if errors.get(key) is not None))
    if errors.get("token_accuracy") is not None:
        lines.append(_tokens(errors))
    lines = [f"{rows}: {line}" for line in lines if line]
    compared = info["layers"][layer].get("auto")
    if compared:  # --decoder auto fitted both
        kept = "linear" if compared["linear"] < compared["conv"] else "conv"
        lines.append(f"auto: held-out relative error conv {compared['conv']:.3g}, linear "
                     f"{compared['linear']:.3g}; kept {kept}")
    return lines


def _tokens(scores: dict) -> str:
    """Nearest-token accuracy (tokens.token_scores) beside its chance baseline, the
    positions counted and how padding was told apart."""
    text = f"nearest-token accuracy {percent(scores['token_accuracy'])}"
    if scores.get("chance_accuracy") is not None:
        text += f" (chance: the most frequent token {percent(scores['chance_accuracy'])})"
    if "real_positions" in scores:
        text += f" over {scores['real_positions']} positions"
    if "padding" in scores:
        text += f", padding by {scores['padding']}"
    return text
