"""onnxplain: explain any exported ONNX model from the command line."""

from __future__ import annotations

import json
import sys

import click

from .dataset import explain_dataset
from .errors import COMMAND_LINE, friendly, one_line
from .evaluate import evaluate
from .export import export
from .generate import generate
from .local_head import local_head
from .method_table import FAMILIES, SET_TESTS_HEADING, method_rows, set_test_rows
from .options import (
    batch_size_option,
    clip_percentile_option,
    colormap_option,
    inputs_option,
    memory_budget_option,
    method_options,
    output_seed_option,
    parse_pairs,
    place_options,
    provider_option,
    quiet_option,
    target_option,
    token_target,
    vocab_option,
)
from .presets import image_options
from .probe import probe
from .report_command import report
from .tcav import tcav


class OneLineErrors(click.Group):
    """Usage errors as one `error: ...` line (exit 2), like every other bad input."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        given = kwargs.get("args", args[0] if args else None)
        COMMAND_LINE[:] = sys.argv[1:] if given is None else list(given)
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
    """List the attribution methods by family, with their options (default, accepted values,
    meaning), paper and whether they export."""
    rows = method_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if quiet:
        return
    width = max(len(row["name"]) for row in rows) + 1
    family = None
    for row in rows:
        if row["family"] != family:
            family = row["family"]
            click.echo(("" if row is rows[0] else "\n") + FAMILIES.get(family, family))
        mark = " [export]" if row["exportable"] else ""
        click.echo(f"  {row['name']:{width}s} {row['summary']}{mark}")
        click.echo(f"  {'':{width}s} paper: {row['reference']}")
        for option in row["options"]:
            local = "; in-process only" if row["exportable"] and not option["exported"] else ""
            click.echo(f"  {'':{width}s} -O {option['name']}={option['default']}: "
                       f"{option['help']} ({option['expects']}{local})")
    click.echo("\n" + SET_TESTS_HEADING)
    for test in set_test_rows():
        click.echo(f"  {test['name']:{width}s} {test['summary']}")
        click.echo(f"  {'':{width}s} paper: {test['reference']}")
        click.echo(f"  {'':{width}s} API: {test['function']}")
        click.echo(f"  {'':{width}s} CLI: {test['command']}")
    click.echo("\n[export]: `onnxplain export` bakes the method into a standalone ONNX file; "
               "-O KEY=VALUE sets an option (API: keyword arguments)")


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@click.option("-q", "--quiet", is_flag=True, help="only check that MODEL loads (errors only)")
@friendly
def inspect(model: str, as_json: bool, quiet: bool) -> None:
    """Inputs, outputs, opsets, ops, gaps in backward rules and candidate layers of MODEL."""
    from onnxplain.describe import describe_model
    from onnxplain.graph.model import Model

    from .report import print_description

    description = describe_model(Model.load(model))
    if as_json:
        click.echo(json.dumps(description, indent=2, default=str))
    elif not quiet:
        print_description(description)


@main.command()
@click.argument("model")
@inputs_option
@click.option("-m", "--method", default="saliency", show_default=True,
              help="attribution method (see `onnxplain methods`)")
@target_option
@place_options
@click.option("--output", "output_name", default=None, help="model output to explain")
@output_seed_option()
@click.option("--attribute-at", "attribute_at", multiple=True, metavar="INPUT=TENSOR",
              help="take INPUT's attribution at another float tensor (repeatable)")
@click.option("-o", "--out", default="onnxplain_out", show_default=True,
              help="folder for attribution.npy, heatmaps and summary.json; files an earlier "
                   "run wrote there and this one does not are removed")
@colormap_option
@clip_percentile_option
@click.option("-O", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="method option, e.g. -O abs=false or -O baseline=@ref.npy for an array "
                   "(repeatable; each method's options: `onnxplain methods`)")
@provider_option
@batch_size_option
@memory_budget_option
@vocab_option
@click.option("--json", "as_json", is_flag=True, help="print summary.json to stdout")
@quiet_option
@image_options
@friendly
def explain(model: str, inputs: tuple[str, ...], method: str, target: str | None,
            place: dict, output_name: str | None, output_seed: str | None,
            attribute_at: tuple[str, ...], out: str, colormap: str | None,
            clip_percentile: float, options: tuple[str, ...], provider: str,
            batch_size: int | None, memory_budget_mb: float, vocab: str | None,
            as_json: bool, quiet: bool, image_settings) -> None:
    """Explain MODEL on the given inputs; write attributions, heatmaps and a summary."""
    from onnxplain import Explainer

    from .input_files import load_inputs, read_array, say_notes
    from .outputs import (
        HeatmapStyle,
        describe_result,
        prepare_folder,
        write_explanation,
        writing_into,
    )

    vocabulary = None
    if vocab is not None:
        from onnxplain.vocab import load_vocabulary

        vocabulary = load_vocabulary(vocab)
    explainer = Explainer(model, providers=provider, output=output_name,
                          attribute_at=parse_pairs(attribute_at, "--attribute-at"),
                          memory_budget_mb=memory_budget_mb, progress=not (quiet or as_json))
    loaded = load_inputs(explainer.model, inputs, image_settings, say_notes(quiet or as_json))
    arrays, files = loaded.arrays, list(loaded.files)
    if vocab is not None:
        files.append(vocab)
    seed = None
    if output_seed is not None:
        seed = read_array(output_seed)
        files.append(output_seed)
    chosen_options = method_options(options, files)
    folder = prepare_folder(out, [model, *files])
    target_ids = token_target(target, vocabulary, explainer.model, explainer.output)
    result = explainer.explain(arrays, method=method, target=target_ids,
                               output_seed=seed, batch_size=batch_size, **place,
                               **chosen_options)
    with writing_into(folder) as stage:
        written = write_explanation(result, stage, [model, *files], result.signed, arrays,
                                    vocabulary, HeatmapStyle(colormap, clip_percentile), loaded)
    if as_json:
        summary = json.loads((folder / "summary.json").read_text())
        summary["files"] = written  # as paths here, names relative to the folder in the file
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        click.echo(f"{result.method} on {model} ({result.runtime_s:.3f} s, "
                   f"{result.providers[0]})")
        for line in describe_result(result, vocabulary):
            click.echo(f"  {line}")
        click.echo(f"wrote {len(written)} files to {folder}/")


main.add_command(local_head)
main.add_command(explain_dataset)
main.add_command(export)
main.add_command(evaluate)
main.add_command(report)
main.add_command(generate)
main.add_command(tcav)
main.add_command(probe)


if __name__ == "__main__":
    main()
