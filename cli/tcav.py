"""`onnxplain tcav`: does a concept (a set of example inputs) push MODEL towards a class?
Testing with Concept Activation Vectors (Kim et al. 2018) over the inputs, at one layer."""

from __future__ import annotations

import json

import click

from .errors import friendly
from .options import inputs_option, parse_targets, provider_option, quiet_option, target_option
from .presets import image_options


@click.command("tcav")
@click.argument("model")
@inputs_option
@click.option("--concept", "concepts", multiple=True, required=True, metavar="NAME=FILES",
              help="a concept's examples: an .npy/.npz, image files or a folder, read as the "
                   "inputs are (repeatable; FILES may be comma-separated)")
@click.option("--random", "randoms", multiple=True, required=True, metavar="FILES",
              help="a random example set the concepts are tested against (repeat it: the "
                   "p-value needs at least two)")
@click.option("--layer", default=None, metavar="TENSOR",
              help="tensor or node name (default: the last conv block; see `onnxplain "
                   "inspect`)")
@target_option
@click.option("--ridge", type=click.FloatRange(min=0, min_open=True), default=1e-2,
              show_default=True, help="the CAV classifier's L2 penalty (relative)")
@click.option("--output", "output_name", default=None, help="model output to explain")
@provider_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable scores on stdout")
@quiet_option
@image_options
@friendly
def tcav(model: str, inputs: tuple[str, ...], concepts: tuple[str, ...],
         randoms: tuple[str, ...], layer: str | None, target: str | None, ridge: float,
         output_name: str | None, provider: str, as_json: bool, quiet: bool,
         image_settings) -> None:
    """TCAV scores of each concept against each random set at a layer: the fraction of the
    inputs whose class score rises along the concept's direction, and a t-test's p-value."""
    from onnxplain import Explainer, InputError
    from onnxplain.concepts import tcav as run_tcav

    from .input_files import read_inputs, say_notes

    explainer = Explainer(model, providers=provider, output=output_name, progress=False)
    say = say_notes(quiet or as_json)

    def read(files: str) -> dict:
        return read_inputs(explainer.model, tuple(files.split(",")), image_settings, say)[0]

    named = {}
    for spec in concepts:
        name, sep, files = spec.partition("=")
        if not sep or not name or not files:
            raise InputError(f"--concept takes NAME=FILES, got '{spec}'")
        if name in named:
            raise InputError(f"--concept '{name}' is given twice")
        named[name] = read(files)
    arrays = read_inputs(explainer.model, inputs, image_settings, say)[0]
    result = run_tcav(explainer, arrays, named, [read(files) for files in randoms],
                      layer=layer, target=parse_targets(target), ridge=ridge)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    elif not quiet:
        for line in describe(result.as_dict()):
            click.echo(line)


def describe(result: dict) -> list[str]:
    """One line per concept: mean sign count, its spread over the random sets, p-value."""
    lines = [f"TCAV at '{result['layer']}', {len(result['targets'])} inputs",
             f"  {'concept':20s} {'sign count':>10s} {'min..max':>13s} {'magnitude':>11s} "
             f"{'p-value':>9s} {'vs random':>9s}"]
    for name, scores in result["concepts"].items():
        signs = scores["sign_count"]
        magnitude = sum(scores["magnitude"]) / len(scores["magnitude"])
        shown = ["n/a" if p is None else format(p, ".3g")
                 for p in (scores["p_value"], scores["null_p_value"])]
        lines.append(f"  {name:20s} {scores['mean_sign_count']:10.3f} "
                     f"{min(signs):6.3f}..{max(signs):5.3f} {magnitude:11.4g} "
                     f"{shown[0]:>9s} {shown[1]:>9s}")
    return lines
