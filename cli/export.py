"""`onnxplain export`: bake a method into one ONNX file that runs without onnxplain."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import friendly
from .input_files import read_inputs
from .local_head import refuse_inputs, write_model
from .options import method_options, output_seed_option, place_options, quiet_option


@click.command("export")
@click.argument("model")
@click.option("-m", "--method", default="saliency", show_default=True,
              help="method to bake in (see the README's export table)")
@click.option("-O", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="method option, e.g. -O n_steps=32; -O baseline=@ref.npy passes an array "
                   "(those an exported method reads: `onnxplain methods`)")
@click.option("--output", "output_name", default=None, help="model output to explain")
@place_options
@output_seed_option(
    " (one row of it, or [1, ...]); the explainer takes an `output_seed` input instead of "
    "`target` (optional, these weights by default; feed one row for all rows or one per "
    "row). Any float output with a static shape after the batch axis, not only "
    "[batch, classes]")
@click.option("-o", "--out", required=True, metavar="FILE.onnx",
              help="where to write the explainer model")
@click.option("--target-input", type=click.Choice(["optional", "required"]),
              default="optional", show_default=True,
              help="'optional' gives `target` a default (the predicted class); 'required' "
              "makes it a plain input, for runtimes that cannot feed inputs with defaults "
              "(onnxruntime-node)")
@click.option("--check", is_flag=True, help="compare the exported model with the in-process "
              "method on sample inputs and report the largest difference")
@click.option("-i", "--input", "inputs", multiple=True,
              help="sample inputs for --check (default: random rows of the declared shape)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@quiet_option
@friendly
def export(model: str, method: str, options: tuple[str, ...], output_name: str | None,
           place: dict, output_seed: str | None, out: str, target_input: str, check: bool,
           inputs: tuple[str, ...], as_json: bool, quiet: bool) -> None:
    """Write MODEL plus METHOD's attributions as one ONNX model (inputs: the original ones
    and an optional `target`; outputs: the original ones, `target_used` and the method's)."""
    from onnxplain._text import counted
    from onnxplain.export_check import check_export, sample_inputs
    from onnxplain.exporter import export_explainer
    from onnxplain.graph.model import Model

    from .input_files import read_array
    from .outputs import prepare_folder

    seed_file = [output_seed] if output_seed is not None else []
    refuse_inputs(out, [model, *_files(inputs), *seed_file])
    prepare_folder(str(Path(out).absolute().parent), [])  # writable, before any work
    loaded = Model.load(model)
    chosen_options = method_options(options)
    seed = read_array(output_seed) if output_seed is not None else None
    # Every argument is read before anything is written, and the model is written only once
    # the check passed: a failed export leaves nothing behind.
    arrays = None
    if check:
        arrays = read_inputs(loaded, inputs)[0] if inputs else sample_inputs(loaded)
    exported = export_explainer(loaded, method, output=output_name, target_input=target_input,
                                output_seed=seed, **place, **chosen_options)
    summary = {"written": out, "method": method,
               "added": json.loads(next(p.value for p in exported.metadata_props
                                        if p.key == "onnxplain.added"))}
    if arrays is not None:
        summary["check"] = check_export(loaded, exported, method, chosen_options, arrays,
                                        output_name, output_seed=seed,
                                        progress=not (quiet or as_json), place=place)
    write_model(exported, out)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    if quiet:
        return
    click.echo(f"wrote {out}: {method} baked into the model")
    for name, meaning in summary["added"].items():
        click.echo(f"  {name}: {meaning}")
    if check:
        result = summary["check"]
        click.echo(f"check on {counted(result['rows'], 'row')}: largest difference "
                   f"{result['max_abs_diff']:.3g} (relative {result['max_rel_diff']:.3g}) "
                   f"against the in-process method")


def _files(specs: tuple[str, ...]) -> list[str]:
    return [spec.split("=", 1)[-1] for spec in specs]



