"""Plain-text rendering of `onnxplain inspect`."""

from __future__ import annotations

import click


def _shape(shape) -> str:
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def print_description(d: dict) -> None:
    echo = click.echo
    echo(f"model: {d['path'] or '(in memory)'}  IR {d['ir_version']}"
         + (f"  producer {d['producer']}" if d["producer"] else ""))
    echo("opsets: " + ", ".join(f"{k} {v}" for k, v in d["opsets"].items()))
    echo("inputs:")
    for spec in d["inputs"]:
        echo(f"  {spec['name']}: {spec['dtype']} {_shape(spec['shape'])}")
    echo("outputs:")
    for spec in d["outputs"]:
        echo(f"  {spec['name']}: {spec['dtype']} {_shape(spec['shape'])}")
    batch = d["batch_axis"]
    echo("batch axis: " + ("symbolic" if batch["symbolic"] else
                           f"fixed to {batch['fixed_size']} (rows run in chunks)"))
    echo("attributed at: " + ("; ".join(d["attribution_sources"]) or "nothing"))
    for name, reason in d["unattributed_inputs"].items():
        echo(f"  {name}: {reason}")
    for name, stem in d["affine_stems"].items():
        echo(f"affine stem of {name}: {' -> '.join(stem['ops'])}, ending at '{stem['end']}' "
             "(Integrated Gradients walks its path after it)")
    echo(f"nodes: {d['node_count']}")
    echo("ops: " + ", ".join(f"{op} x{count}" for op, count in d["op_histogram"].items()))
    missing = d["ops_without_backward_rule"]
    if missing:
        echo(f"ops without a backward rule ({len(missing)} nodes):")
        for item in missing:
            # on_default_path: the rule fails for the explained inputs' own gradients
            where = ("on the explained path" if item["on_default_path"]
                     else "not blocking the explained path")
            reason = f" - {item['reason']}" if item["reason"] else ""
            echo(f"  {item['domain']}::{item['op_type']} (opset {item['opset']}) "
                 f"'{item['node']}' [{where}]{reason}")
    else:
        echo("ops without a backward rule: none")
    unknown = d.get("rank_unknown_statically") or []
    if unknown:
        echo(f"rank known only at run time ({len(unknown)} nodes; gradient programs are built "
             "per input shape): " + ", ".join(f"'{u['node']}' ({u['op']})" for u in unknown[:8])
             + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""))
    entries = d["candidate_layers"]["conv"]
    echo("candidate layers (last conv blocks):" + ("" if entries else " none found"))
    for entry in entries:
        echo(f"  {entry['tensor']} {_shape(entry['shape'])} (node '{entry['node']}')")
    _print_attention(d)
    _print_onnxplain(d.get("onnxplain") or {})


def _print_onnxplain(found: dict) -> None:
    """What onnxplain wrote into this model (an exported explainer, a local head)."""
    echo = click.echo
    if "method" in found:
        echo(f"exported explainer: {found['method']} (onnxplain {found.get('version', '?')}), "
             f"explaining output '{found.get('explained_output', '?')}'")
        for name, meaning in (found.get("added") or {}).items():
            echo(f"  {name}: {meaning}")
    head = found.get("local_head")
    if isinstance(head, dict):
        echo(f"local head on '{head.get('layer')}': {head.get('centers')} centers, "
             f"{head.get('classes')} classes, {head.get('distance')} distance, epsilon "
             f"{head.get('epsilon')}")


def _print_attention(d: dict) -> None:
    echo = click.echo
    if d.get("attention_problem"):
        echo(f"attention layers: none readable ({d['attention_problem']})")
        return
    layers = d["attention_layers"]
    tokens = d.get("attention_tokens")
    extra = ""
    if tokens:
        extra = f" ({tokens['tokens']} tokens"
        if tokens.get("patch_grid"):
            rows, cols = tokens["patch_grid"]
            extra += f": {tokens['class_tokens']} class token(s) + {rows}x{cols} patches"
        extra += ")"
    echo(f"attention layers: {len(layers) or 'none found'}{extra}")
    for layer in layers:
        heads = layer["heads"] if layer["heads"] is not None else "?"
        masks = ", ".join(layer["mask_inputs"]) or "no mask"
        echo(f"  {layer['layer']}: {layer['probabilities']} ({heads} heads, "
             f"{layer['layout']}, {masks}; reads '{layer['hidden_state']}')")
