"""`onnxplain generate`: greedy generation with a causal language model, every generated
token explained over the prompt and the tokens generated before it."""

from __future__ import annotations

import json
import os
import time

import click

from .errors import friendly
from .options import (
    batch_size_option,
    memory_budget_option,
    method_options,
    provider_option,
    quiet_option,
    vocab_option,
)


@click.command()
@click.argument("model")
@click.option("-i", "--input", "prompt_file", default=None, metavar="FILE",
              help="the prompt: one row of token ids (.npy, or .npz with its attention mask)")
@click.option("--text", default=None,
              help="the prompt as words of the vocabulary separated by spaces (needs --vocab; "
                   "no subword splitting)")
@vocab_option
@click.option("-m", "--method", default="saliency", show_default=True,
              help="attribution method for every step (see `onnxplain methods`)")
@click.option("-n", "--steps", default=5, show_default=True, type=int,
              help="how many tokens to generate")
@click.option("-O", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="method option, as for `onnxplain explain` (repeatable)")
@provider_option
@batch_size_option
@memory_budget_option
@click.option("-o", "--out", default="onnxplain_generate", show_default=True,
              help="folder for generation.json and generation.html")
@click.option("--json", "as_json", is_flag=True, help="print generation.json to stdout")
@quiet_option
@friendly
def generate(model: str, prompt_file: str | None, text: str | None, vocab: str | None,
             method: str, steps: int, options: tuple[str, ...], provider: str,
             batch_size: int | None, memory_budget_mb: float, out: str, as_json: bool,
             quiet: bool) -> None:
    """Generate STEPS tokens greedily after a prompt and explain each one (the logit of the
    generated token, over the prompt and the tokens generated before it)."""
    from onnxplain import Explainer
    from onnxplain.errors import InputError
    from onnxplain.generation import generate as run_generation
    from onnxplain.vocab import load_vocabulary

    from .outputs import prepare_folder, writing_into

    vocabulary = None if vocab is None else load_vocabulary(vocab)
    explainer = Explainer(model, providers=provider, memory_budget_mb=memory_budget_mb,
                          progress=False)
    files = [model, *(f for f in (prompt_file, vocab) if f is not None)]
    prompt = _prompt(explainer, prompt_file, text, vocabulary)
    chosen = method_options(options, files)
    if "batch_size" in chosen:
        raise InputError("give rows per run as --batch-size, not -O batch_size")
    folder = prepare_folder(out, files)
    start = time.perf_counter()
    generation = run_generation(explainer, prompt, steps, method=method, batch_size=batch_size,
                                **chosen)
    elapsed = time.perf_counter() - start
    record = generation.as_json(vocabulary)
    with writing_into(folder) as stage:
        _write(stage, files, record, generation, vocabulary)
    if as_json:
        click.echo(json.dumps(record, indent=2))
    elif not quiet:
        for line in _describe(record, model, elapsed):
            click.echo(line)
        click.echo(f"wrote generation.json and generation.html to {folder}/")


def _prompt(explainer, prompt_file: str | None, text: str | None, vocabulary):
    """The prompt's arrays from --input, or its token ids from --text."""
    from onnxplain.errors import InputError

    from .input_files import load_inputs

    if (prompt_file is None) == (text is None):
        raise InputError("give the prompt as either --input FILE or --text \"words\"")
    if text is not None:
        if vocabulary is None:
            raise InputError("--text needs --vocab to turn words into token ids")
        return vocabulary.encode_words(text)
    return load_inputs(explainer.model, (prompt_file,)).arrays


def _write(stage, files: list[str], record: dict, generation, vocabulary) -> None:
    from onnxplain.errors import InputError
    from onnxplain.files import save_json
    from onnxplain.viz.tokens import generation_html, save_html

    guard = {os.path.realpath(f) for f in files}
    targets = {name: stage.path / name for name in ("generation.json", "generation.html")}
    for name in targets:
        if os.path.realpath(stage.folder / name) in guard:
            raise InputError(f"refusing to overwrite {stage.folder / name}: it is one of your "
                             "input files")
    save_json(targets["generation.json"], record)
    steps = [(step["token"], generation.steps[i].scores)
             for i, step in enumerate(record["steps"])]
    title = f"{generation.method}: each generated token explained"
    signed = generation.steps[0].result.signed
    save_html(targets["generation.html"], generation_html(record["prompt"]["tokens"], steps,
                                                          title=title, signed=signed))


def _describe(record: dict, model: str, elapsed: float) -> list[str]:
    """The prompt, the continuation, and per step the token and its strongest context token."""
    lines = [f"{record['method']} on {model}: {len(record['steps'])} tokens in {elapsed:.3f} s",
             f"  prompt:    {' '.join(record['prompt']['tokens'])}",
             f"  generated: {' '.join(record['generated']['tokens'])}"]
    for step in record["steps"]:
        scores = step["attribution"]
        top = max(range(len(scores)), key=lambda i: abs(scores[i]))
        lines.append(f"  step {step['step'] + 1}: {step['token']!r} (logit {step['score']:.4g});"
                     f" strongest context token {step['context'][top]!r} at {top} "
                     f"({scores[top]:+.4g})")
    return lines
