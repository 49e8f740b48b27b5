"""Options several commands share, declared once so their names and help stay the same."""

from __future__ import annotations

import click

from onnxplain.errors import InputError

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
