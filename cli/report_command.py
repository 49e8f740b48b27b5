"""`onnxplain report`: one self-contained HTML page comparing attribution methods."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from onnxplain.errors import InputError

from .errors import friendly
from .options import (
    batch_size_option,
    inputs_option,
    memory_budget_option,
    output_seed_option,
    parse_targets,
    place_options,
    provider_option,
    quiet_option,
    target_option,
    vocab_option,
)
from .presets import image_options

# Faithfulness metrics the report asks onnxplain.metrics for (the cheap, readable ones).
REPORT_METRICS = ("deletion", "insertion")


@click.command("report")
@click.argument("model")
@inputs_option
@click.option("-m", "--methods", default=None,
              help="comma-separated methods (default: chosen from the model, e.g. "
                   "saliency,integrated_gradients,grad_cam for a CNN)")
@target_option
@output_seed_option(" (scores too)")
@place_options
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="classes listed per row")
@click.option("--labels", default=None, metavar="FILE", help="class names, one per line")
@vocab_option
@click.option("-o", "--out", default="onnxplain_report", show_default=True,
              help="folder for index.html, report.json and the PNG pictures")
@click.option("-O", "--option", "options", multiple=True, metavar="METHOD.KEY=VALUE",
              help="option of one method, e.g. -O integrated_gradients.n_steps=16 or "
                   "-O rise.baseline=@ref.npy (repeatable)")
@provider_option
@batch_size_option
@memory_budget_option
@click.option("--probe", "probe_file", default=None, metavar="FILE.onnx",
              help="a decoder probe of MODEL ('onnxplain probe fit'): its reconstructions "
                   "of each row, per probed layer, beside the methods (the method name "
                   "'probe' in --methods asks for it too; --methods probe alone runs no "
                   "attribution method)")
@click.option("--no-scores", is_flag=True,
              help="skip the faithfulness scores (onnxplain.metrics), which cost extra runs")
@click.option("--json", "as_json", is_flag=True, help="print report.json to stdout")
@quiet_option
@image_options
@friendly
def report(model: str, inputs: tuple[str, ...], methods: str | None, target: str | None,
           output_seed: str | None, place: dict, top_k: int, labels: str | None, vocab: str | None,
           out: str, options: tuple[str, ...], provider: str, batch_size: int | None,
           memory_budget_mb: float, probe_file: str | None, no_scores: bool, as_json: bool,
           quiet: bool, image_settings) -> None:
    """Explain MODEL with several methods; write one self-contained index.html comparing
    them (heatmaps or token highlighting, runtimes, scores), report.json and PNGs."""
    from onnxplain import Explainer
    from onnxplain._text import counted
    from onnxplain.viz.report import build_report, load_labels
    from onnxplain.viz.report_files import check_folder, write_report

    from .input_files import read_array, read_inputs, say_notes
    from .outputs import prepare_folder, writing_into

    names, with_probe = _without_probe(_method_list(methods), probe_file)
    class_names = load_labels(labels) if labels is not None else None
    vocabulary = None
    if vocab is not None:
        from onnxplain.vocab import load_vocabulary

        vocabulary = load_vocabulary(vocab)
    explainer = Explainer(model, providers=provider, memory_budget_mb=memory_budget_mb,
                          progress=not (quiet or as_json))
    # Every method and score of the report runs under --batch-size (a view: see Engine).
    explainer.engine = explainer.engine.with_policy(explainer.policy.derive(
        batch_size=batch_size))
    say = say_notes(quiet or as_json)
    arrays, files = read_inputs(explainer.model, inputs, image_settings, say)
    files += [path for path in (labels, vocab, output_seed, probe_file) if path is not None]
    probe = _probe_of(probe_file, explainer.model) if with_probe else None
    if probe is not None:  # refused before the methods run, not after them
        from onnxplain.probe.explain import check_probe_inputs

        check_probe_inputs(probe, {name: np.asarray(value) for name, value in arrays.items()})
    seed = read_array(output_seed) if output_seed is not None else None
    per_method = _method_options(options)
    for values in per_method.values():
        for key, value in values.items():
            if isinstance(value, str) and value.startswith("@"):  # an array from a file
                values[key] = read_array(value[1:])
                files.append(value[1:])
    check_folder(out, [model, *files])
    prepare_folder(out, [])  # writable, before the methods run
    built = build_report(explainer, arrays, names, target=parse_targets(target), top_k=top_k,
                         labels=class_names, vocabulary=vocabulary, options=per_method,
                         score=None if no_scores else metrics_scorer(seed), progress=say,
                         output_seed=seed, place=place)
    if probe is not None:
        from onnxplain.probe.explain import explain_probe, report_columns

        built.reconstructions = report_columns(explain_probe(probe, built.feeds, provider))
    with writing_into(Path(out)) as stage:  # checked against the inputs by check_folder
        written = write_report(built, stage.path)
    if as_json:  # the file just written, so stdout and report.json cannot differ
        click.echo(json.dumps(json.loads(Path(out, "report.json").read_text()), indent=2))
    elif not quiet:
        click.echo(f"wrote {counted(len(written), 'file')} to {out}/: open {out}/index.html")


def metrics_scorer(output_seed=None) -> Callable:
    """onnxplain.metrics.evaluate as the report's scorer: per row, each metric beside the
    same metric for random attributions (of the `output_seed` objective, when given)."""
    from onnxplain import metrics

    def score(explainer, feeds, attribution) -> dict:
        return flatten_scores(metrics.evaluate(explainer, feeds, attribution,
                                               metrics=REPORT_METRICS, output_seed=output_seed))

    return score


def flatten_scores(found: dict) -> dict:
    """{label: {"per_row", "random_per_row", "better"}} from an evaluate() result: the
    report shows each row's score, its random baseline and which direction is better."""
    return {entry.get("label") or name: {key: entry.get(key) for key in
                                         ("per_row", "random_per_row", "better")}
            for name, entry in found["metrics"].items()}


def _method_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise InputError("--methods is empty; give method names separated by commas")
    return names


def _without_probe(names: list[str] | None, probe_file: str | None
                   ) -> tuple[list[str] | None, bool]:
    """The methods without 'probe' (no attribution method: the probe file's decoders), and
    whether the report shows the probe (asked by name or by --probe)."""
    asked = names is not None and "probe" in names
    if asked and probe_file is None:
        raise InputError("--methods asks for 'probe' but no --probe FILE.onnx is given (fit "
                         "one with 'onnxplain probe fit')")
    if names is not None:
        names = [name for name in names if name != "probe"]  # [] (probe alone): no method
    return names, asked or probe_file is not None


def _probe_of(path: str, model):
    """The probe file, refused when it was fitted on another model than MODEL."""
    from onnxplain.probe.model import check_probe_of, load_probe

    probe = load_probe(path)
    check_probe_of(probe, model)
    return probe


def _method_options(pairs: tuple[str, ...]) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        method, dot, name = key.strip().partition(".")
        if not sep or not dot or not method or not name:
            raise InputError(f"--option '{pair}' is not METHOD.KEY=VALUE "
                             "(e.g. integrated_gradients.n_steps=16)")
        found.setdefault(method, {})[name] = value
    return found


