"""Options several commands share, declared once so their names and help stay the same."""

from __future__ import annotations

import functools

import click

from onnxplain.errors import InputError
from onnxplain.viz.heatmap import CLIP_PERCENTILE, COLORMAPS

target_option = click.option(
    "-t", "--target", default=None,
    help="class index, or one per row separated by commas (default: predicted)")
provider_option = click.option(
    "--provider", default="auto", show_default=True,
    help="execution provider: auto (CUDA if it works, else CPU), cpu or cuda")
vocab_option = click.option(
    "--vocab", default=None, metavar="FILE",
    help="token strings for token-id inputs: vocab.txt, vocab.json or tokenizer.json "
         "(default: the ids)")
quiet_option = click.option("-q", "--quiet", is_flag=True,
                            help="print nothing but errors and warnings")
colormap_option = click.option(
    "--colormap", type=click.Choice(list(COLORMAPS)), default=None,
    help="heatmap colours; rdbu is blue-white-red (default: inferno, rdbu for signed maps)")
clip_percentile_option = click.option(
    "--clip-percentile", type=click.FloatRange(50, 100), default=CLIP_PERCENTILE,
    show_default=True,
    help="heatmaps: this percentile of |value| gets the full colour; larger values are clipped")


def inputs_option(command):
    """`-i/--input` (repeatable) plus input files after the model, merged into `inputs`, so
    `-i a.png b.png` and `-i images/` both work; at least one input is required."""
    input_option = click.option(
        "-i", "--input", "inputs", multiple=True,
        help="x.npy, NAME=x.npy, an .npz with one array per input name, image files or a "
             "folder of them (several make a batch; files after MODEL are inputs too)")
    more_option = click.argument("more_inputs", nargs=-1, metavar="[INPUT]...")

    @functools.wraps(command)
    def wrapper(*args, inputs: tuple[str, ...], more_inputs: tuple[str, ...], **kwargs):
        if not inputs and not more_inputs:
            raise click.UsageError("no inputs: give -i FILE (files after MODEL count too)",
                                   click.get_current_context())
        return command(*args, inputs=(*inputs, *more_inputs), **kwargs)

    return input_option(more_option(wrapper))


def parse_targets(text: str | None) -> int | list[int] | None:
    """--target: one class for every row, or one per row separated by commas."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--target '{text}' is not a class index or a comma-separated list "
                         "of them") from None
    if not values:
        raise InputError("--target is empty")
    return values[0] if len(values) == 1 else values


def parse_pairs(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    """KEY=VALUE options (repeatable) as a dict."""
    found = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"{option} '{pair}' is not KEY=VALUE")
        key, value = pair.split("=", 1)
        found[key.strip()] = value
    return found


def method_options(pairs: tuple[str, ...], files: list[str] | None = None) -> dict:
    """-O KEY=VALUE method options; `-O baseline=@ref.npy` passes the array in that file
    (its path is added to `files`, the user's files a command must not overwrite)."""
    from .input_files import read_array

    found: dict = parse_pairs(pairs, "--option")
    for key, value in found.items():
        if value.startswith("@"):
            found[key] = read_array(value[1:])
            if files is not None:
                files.append(value[1:])
    return found
