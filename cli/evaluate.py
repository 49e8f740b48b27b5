"""`onnxplain evaluate`: explain MODEL on the inputs, then score the explanation with the
faithfulness and sanity metrics, each beside the same score for random attributions."""

from __future__ import annotations

import json

import click

from .errors import friendly
from .options import (
    batch_size_option,
    inputs_option,
    memory_budget_option,
    method_options,
    output_seed_option,
    parse_targets,
    place_options,
    provider_option,
    quiet_option,
    target_option,
)
from .presets import image_options

DEFAULT_METRICS = "deletion,insertion,morf,lerf,completeness,randomization"


@click.command("evaluate")
@click.argument("model")
@inputs_option
@click.option("-m", "--method", default="saliency", show_default=True,
              help="attribution method (see `onnxplain methods`)")
@target_option
@output_seed_option(" (and scores it)")
@place_options
@click.option("-O", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="method option, e.g. -O n_steps=32 or -O baseline=@ref.npy (repeatable)")
@click.option("--metrics", "metric_names", default=DEFAULT_METRICS, show_default=True,
              help="comma-separated metrics to compute")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="points of the deletion, insertion and pixel-flipping curves")
@click.option("--baseline-value", type=float, default=0.0, show_default=True,
              help="value removed features take (token inputs: a token id)")
@click.option("--features", default="auto", show_default=True,
              help="what is removed together: auto, pixels, grid, superpixels, tokens, "
                   "columns, or @mask.npy (integer ids shaped like one row)")
@click.option("--cell", type=click.IntRange(min=0), default=0, show_default=True,
              help="grid cell size in pixels (0: 8 cells per side)")
@click.option("--probability", is_flag=True,
              help="score the softmax probability of the target (as RISE) instead of the "
                   "explained logit")
@click.option("--layers", type=click.IntRange(min=1), default=None,
              help="randomise only the top N weighted layers (default: all)")
@click.option("--draws", type=click.IntRange(min=0), default=3, show_default=True,
              help="random attributions averaged for each random baseline")
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the random attributions and the randomised weights")
@click.option("--output", "output_name", default=None, help="model output to explain")
@provider_option
@batch_size_option
@memory_budget_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable scores on stdout")
@quiet_option
@image_options
@friendly
def evaluate(model: str, inputs: tuple[str, ...], method: str, target: str | None,
             output_seed: str | None, place: dict, options: tuple[str, ...], metric_names: str,
             steps: int, baseline_value: float, features: str, cell: int, probability: bool,
             layers: int | None, draws: int, seed: int, output_name: str | None,
             provider: str, batch_size: int | None, memory_budget_mb: float, as_json: bool,
             quiet: bool, image_settings) -> None:
    """Score MODEL's explanation of the inputs: deletion and insertion AUC, MoRF and LeRF
    AOPC, completeness error, parameter-randomisation correlation."""
    from onnxplain import Explainer
    from onnxplain.metrics import evaluate as evaluate_scores
    from onnxplain.metrics import resolve_metrics

    from .input_files import read_array, read_inputs, say_notes

    names = resolve_metrics([part for part in metric_names.split(",") if part.strip()])
    explainer = Explainer(model, providers=provider, output=output_name,
                          memory_budget_mb=memory_budget_mb, progress=not (quiet or as_json))
    say = say_notes(quiet or as_json)
    arrays, _ = read_inputs(explainer.model, inputs, image_settings, say)
    chosen_options = method_options(options)
    mask = read_array(features[1:]) if features.startswith("@") else features
    weights = read_array(output_seed) if output_seed is not None else None
    attribution = explainer.explain(arrays, method=method, target=parse_targets(target),
                                    output_seed=weights, batch_size=batch_size,
                                    **place, **chosen_options)
    scores = evaluate_scores(explainer, arrays, attribution, names, steps=steps,
                             baseline_value=baseline_value, features=mask, cell=cell,
                             probability=probability, random_draws=draws, seed=seed,
                             layers=layers, output_seed=weights, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(scores, indent=2))
    elif not quiet:
        for line in describe(scores, model):
            click.echo(line)


def describe(scores: dict, model: str) -> list[str]:
    """The scores as a table: metric, score, random baseline, which direction is better."""
    from onnxplain._text import counted

    settings = scores["settings"]
    lines = [f"{scores['method']} on {model}: {counted(scores['rows'], 'row')} of "
             f"'{scores['input']}', features {settings['features']}, "
             f"{counted(settings['steps'], 'step')}, baseline {settings['baseline_value']:g}, "
             f"random baseline of {counted(settings['random_draws'], 'draw')} "
             f"(seed {settings['seed']})",
             f"  explained: {scores['explained']}",
             f"  {'metric':44s} {'score':>11s} {'random':>11s}"]
    for name, entry in scores["metrics"].items():
        if name == "completeness" and not entry.get("available"):
            lines.append(f"  {entry['label']:44s} {'n/a':>11s} {'-':>11s}  "
                         f"({scores['method']} reports no completeness error)")
            continue
        lines.append(_row(entry["label"], entry))
        if name == "completeness":
            lines.append(_row(entry["relative"]["label"], entry["relative"]))
        if name == "randomization":
            lines.append(_row("  fully randomised", {"mean": entry["last"], "random": None,
                                                      "better": entry["better"]}))
            how = "cumulative" if entry["order"] == "cascading" else "one at a time"
            lines.append(f"    per layer (randomised top first, {how}):")
            for layer in entry["layers"]:
                lines.append(f"    {_number(layer['mean']):>11s}  {layer['node']} "
                             f"({layer['op_type']})")
    return lines


def _row(label: str, entry: dict) -> str:
    return (f"  {label:44s} {_number(entry['mean']):>11s} {_number(entry['random']):>11s}  "
            f"{entry['better']} is better")


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"
