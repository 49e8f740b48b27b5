"""Options several commands share, declared once so their names and help stay the same."""

from __future__ import annotations

import functools
import math

import click

from onnxplain._text import is_integer_text
from onnxplain.errors import InputError
from onnxplain.graph.model import Model
from onnxplain.objective import NEXT_TOKEN, output_form
from onnxplain.runtime.batching import DEFAULT_BUDGET_MB
from onnxplain.viz.heatmap import CLIP_PERCENTILE, COLORMAPS
from onnxplain.vocab import Vocabulary

target_option = click.option(
    "-t", "--target", default=None,
    help="class index, or one per row separated by commas (default: predicted); for a "
         "language model with --vocab, a token string such as moo")
batch_size_option = click.option(
    "--batch-size", type=click.IntRange(min=1), default=None,
    help="rows per run (default: as the memory budget allows)")


def _finite(ctx, param, value: float) -> float:
    """FloatRange lets nan and inf through (no comparison refuses them)."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number of megabytes", ctx, param)
    return value


memory_budget_option = click.option(
    "--memory-budget-mb", "memory_budget_mb", type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BUDGET_MB, show_default=True, callback=_finite,
    help="memory a run may take, in MB: it sizes the rows per run (unless --batch-size) "
         "and per Loop iteration (unless -O internal_batch_size=N)")
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


def output_seed_option(more: str = ""):
    """--output-seed FILE.npy, declared once; `more` says what the command does besides."""
    return click.option(
        "--output-seed", default=None, metavar="FILE.npy",
        help="weights shaped like the output; explains sum(weights * output) per row instead "
             "of a class" + more)


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


def parse_targets(text: str | None, vocabulary: Vocabulary | None = None
                  ) -> int | list[int] | None:
    """--target: one class for every row, or one per row separated by commas. With a
    vocabulary, a part that is not a number is a token string and stands for its id (for
    next-token logits: see token_target)."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise InputError("--target is empty")
    try:
        values = [int(part) if is_integer_text(part) or vocabulary is None
                  else vocabulary.id_of(part) for part in parts]
    except ValueError:
        raise InputError(f"--target '{text}' is not a class index or a comma-separated list "
                         "of them (a token string needs --vocab)") from None
    return values[0] if len(values) == 1 else values


def token_target(text: str | None, vocabulary: Vocabulary | None, model: Model, output: str
                 ) -> int | list[int] | None:
    """parse_targets for a command that knows its model: token strings are accepted only
    where the explained output is next-token logits (elsewhere an id would pass for a
    class index)."""
    values = parse_targets(text, vocabulary)
    named = text is not None and any(not is_integer_text(p.strip()) for p in text.split(",")
                                     if p.strip())
    if named and output_form(model, output) != NEXT_TOKEN:
        raise InputError(f"--target '{text}' names tokens, but output "
                         f"{model.output(output).describe()} is not next-token logits "
                         "[batch, sequence, vocabulary]: give class indices")
    return values


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


def place_options(command):
    """--position P, --pixel Y,X and --region Y0:Y1,X0:X1: where a sequence or map output is
    explained (objective.Place), passed to the command as `place` (explain()'s keywords)."""
    options = [
        click.option("--position", type=int, default=None, metavar="P",
                     help="[batch, positions, classes] outputs: explain position P only "
                          "(default: the predicted class summed over every non-padding "
                          "position; next-token logits: the last one)"),
        click.option("--pixel", default=None, metavar="Y,X",
                     help="[batch, classes, H, W] maps: explain pixel (Y, X) only (default: "
                          "the predicted class summed over every pixel)"),
        click.option("--region", default=None, metavar="Y0:Y1,X0:X1",
                     help="[batch, classes, H, W] maps: explain the box of rows Y0..Y1-1 and "
                          "columns X0..X1-1, summed (half-open, as Python slices)"),
    ]

    @functools.wraps(command)
    def wrapper(*args, position: int | None, pixel: str | None, region: str | None,
                **kwargs):
        try:  # parsed before the command's own error handling: a usage error (exit 2)
            place = {"position": position, "pixel": parse_pixel(pixel),
                     "region": parse_region(region)}
        except InputError as err:
            raise click.UsageError(str(err)) from None
        return command(*args, place={k: v for k, v in place.items() if v is not None},
                       **kwargs)

    for option in options:
        wrapper = option(wrapper)
    return wrapper


def parse_pixel(text: str | None) -> tuple[int, int] | None:
    """--pixel Y,X."""
    if text is None:
        return None
    try:
        y, x = (int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--pixel '{text}' is not Y,X (two integers, row then column)"
                         ) from None
    return y, x


def parse_region(text: str | None) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """--region Y0:Y1,X0:X1."""
    if text is None:
        return None
    try:
        rows, columns = text.split(",")
        (y0, y1), (x0, x1) = ((int(a), int(b)) for a, b in
                              (part.split(":") for part in (rows, columns)))
    except ValueError:
        raise InputError(f"--region '{text}' is not Y0:Y1,X0:X1 (rows Y0 to Y1-1, columns X0 "
                         "to X1-1)") from None
    return (y0, y1), (x0, x1)
