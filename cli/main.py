"""onnxplain: explain any exported ONNX model from the command line."""

from __future__ import annotations

import json
import sys

import click

from .errors import friendly, one_line
from .evaluate import evaluate
from .export import export
from .local_head import local_head
from .options import (
    method_options,
    parse_pairs,
    parse_targets,
    provider_option,
    quiet_option,
    target_option,
    vocab_option,
)
from .presets import image_options
from .report_command import report


class OneLineErrors(click.Group):
    """Usage errors as one `error: ...` line (exit 2), like every other bad input."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except click.ClickException as err:
            hint = ""
            if isinstance(err, click.UsageError) and err.ctx is not None:
                hint = f" (see '{err.ctx.command_path} --help')"
            click.echo(f"error: {one_line(err.format_message())}{hint}", err=True)
            sys.exit(err.exit_code)


def _version() -> str:
    from onnxplain._version import __version__

    return __version__


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="onnxplain")
def main() -> None:
    """Explain any exported ONNX model without the framework it came from."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@quiet_option
@friendly
def methods(as_json: bool, quiet: bool) -> None:
    """List the attribution methods with their defaults."""
    from onnxplain.methods import METHODS

    families = ["gradient", "noise", "layer", "attention", "perturbation", "local"]
    ordered = sorted(METHODS.values(), key=lambda m: (
        families.index(m.family) if m.family in families else len(families), m.name))
    rows = [{"name": m.name, "family": m.family, "summary": m.summary,
             "defaults": m.defaults, "reference": m.reference} for m in ordered]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if quiet:
        return
    width = max(len(row["name"]) for row in rows) + 1
    for row in rows:
        defaults = ", ".join(f"{k}={v}" for k, v in row["defaults"].items()) or "none"
        click.echo(f"{row['name']:{width}s} {row['summary']}")
        click.echo(f"{'':{width}s} defaults: {defaults}; paper: {row['reference']}")


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@click.option("-q", "--quiet", is_flag=True, help="only check that MODEL loads (errors only)")
@friendly
def inspect(model: str, as_json: bool, quiet: bool) -> None:
    """Inputs, outputs, opsets, ops, gaps in backward rules and candidate layers of MODEL."""
    from onnxplain.graph.inspect import describe_model
    from onnxplain.graph.model import Model

    from .report import print_description

    description = describe_model(Model.load(model))
    if as_json:
        click.echo(json.dumps(description, indent=2, default=str))
    elif not quiet:
        print_description(description)


@main.command()
@click.argument("model")
@click.option("-i", "--input", "inputs", multiple=True, required=True,
              help="x.npy, NAME=x.npy, an .npz with one array per input name, or image "
                   "files (several make a batch)")
@click.option("-m", "--method", default="saliency", show_default=True,
              help="attribution method (see `onnxplain methods`)")
@target_option
@click.option("--output", "output_name", default=None, help="model output to explain")
@click.option("--output-seed", default=None, metavar="FILE.npy",
              help="weights shaped like the output; explains sum(weights * output) per row "
                   "instead of a class")
@click.option("--attribute-at", "attribute_at", multiple=True, metavar="INPUT=TENSOR",
              help="take INPUT's attribution at another float tensor (repeatable)")
@click.option("-o", "--out", default="onnxplain_out", show_default=True,
              help="folder for attribution.npy, heatmaps and summary.json")
@click.option("-O", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="method option, e.g. -O abs=false or -O baseline=@ref.npy for an array "
                   "(repeatable)")
@provider_option
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="rows per run (default: the whole batch)")
@vocab_option
@click.option("--json", "as_json", is_flag=True, help="print summary.json to stdout")
@quiet_option
@image_options
@friendly
def explain(model: str, inputs: tuple[str, ...], method: str, target: str | None,
            output_name: str | None, output_seed: str | None, attribute_at: tuple[str, ...],
            out: str, options: tuple[str, ...], provider: str, batch_size: int | None,
            vocab: str | None, as_json: bool, quiet: bool, image_settings) -> None:
    """Explain MODEL on the given inputs; write attributions, heatmaps and a summary."""
    from onnxplain import Explainer

    from .input_files import read_array, read_inputs
    from .outputs import describe_result, prepare_folder, write_explanation

    vocabulary = None
    if vocab is not None:
        from onnxplain.vocab import load_vocabulary

        vocabulary = load_vocabulary(vocab)
    explainer = Explainer(model, providers=provider, output=output_name,
                          attribute_at=parse_pairs(attribute_at, "--attribute-at"),
                          progress=not (quiet or as_json))
    arrays, files = read_inputs(explainer.model, inputs, image_settings)
    if vocab is not None:
        files.append(vocab)
    seed = None
    if output_seed is not None:
        seed = read_array(output_seed)
        files.append(output_seed)
    chosen_options = method_options(options, files)
    folder = prepare_folder(out, [model, *files])
    result = explainer.explain(arrays, method=method, target=parse_targets(target),
                               output_seed=seed, batch_size=batch_size, **chosen_options)
    written = write_explanation(result, folder, [model, *files], result.signed, arrays,
                                vocabulary)
    if as_json:
        summary = result.summary()
        summary["files"] = written
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        click.echo(f"{result.method} on {model} ({result.runtime_s:.3f} s, "
                   f"{result.providers[0]})")
        for line in describe_result(result):
            click.echo(f"  {line}")
        click.echo(f"wrote {len(written)} files to {folder}/")


main.add_command(local_head)
main.add_command(export)
main.add_command(evaluate)
main.add_command(report)


if __name__ == "__main__":
    main()
