"""Peak memory of a saliency run against a plain ONNX Runtime forward of the same model and
batch, each measured in a fresh process (peak resident set size: VmHWM, else `getrusage`).

    python benchmarks/memory.py [--model vgg19|decoder|resnet18|PATH] [--batches 1 8]
        [--exports saliency integrated_gradients ...]

- vgg19: VGG-19's layers (16 convolutions, 3 dense layers, 143.7M parameters, 575 MB of
  float32 weights) with random weights, written in torch here (torchvision is not a
  dependency) and exported once into the temporary folder (reused by later runs).
- decoder: a GPT-2-shaped decoder (vocabulary 50257, width 768, 12 heads, 8 blocks, an
  untied output head; 134.6M parameters, 538 MB) with random weights, 32 tokens, returning
  the last position's logits [N, V]; saliency explains class 3 at the token embeddings.
- resnet18: the model zoo's ResNet-18 configuration (45 MB), a quick check.
- vgg19_external, decoder_external: the same models saved with external data (the weights
  in model.onnx.data beside model.onnx, as large exports are), written once next to them.

Per batch size it prints the peak RSS of
  forward    a process that opens an ONNX Runtime session on the file and runs one forward
  saliency   a process that runs onnxplain.Explainer(file).explain(x, method="saliency")
and `kept`, an upper bound on the activations a backward must keep: every float tensor the
forward computes, for the batch. Goal: saliency <= 1.5 x forward + kept. The weights' size and
the interpreter's baseline (python, numpy, onnxruntime imported; no model) are printed too,
and `held`: the resident memory a process holds after Model.load, above what it held before
(onnxplain imported), after a collection.
With --exports, the size of each exported explainer file against the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import machine, peak_rss, rss  # noqa: E402

MB = 1 << 20
VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M")


def vgg19_architecture():
    """torchvision's vgg19 layout (no batch norm), 224x224 inputs, 1000 classes."""
    from torch import nn

    layers: list[nn.Module] = []
    channels = 3
    for width in VGG19:
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(width), 3, padding=1), nn.ReLU()]
            channels = int(width)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                         nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000))


def vgg19_path() -> Path:
    """The exported VGG-19 (built on the first call; random weights, seed 0)."""
    return _exported("vgg19", vgg19_architecture, (1, 3, 224, 224), "float32", "image")


def decoder_architecture(vocab: int = 50257, width: int = 768, heads: int = 12,
                         layers: int = 8, tokens: int = 32):
    """GPT-2's block layout (pre-LayerNorm, causal attention, tanh-GELU MLP, 4x width)."""
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.register_buffer("causal", torch.full((tokens, tokens), float("-inf")).triu(1))

        def forward(self, x):
            n, t, _ = x.shape
            q, k, v = (part.reshape(n, t, heads, -1).transpose(1, 2)
                       for part in self.qkv(x).split(width, dim=2))
            scores = q @ k.transpose(2, 3) / (width // heads) ** 0.5 + self.causal
            mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, width)
            return self.out(mixed)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.attention = Attention()
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU("tanh"),
                                     nn.Linear(4 * width, width))

        def forward(self, x):
            x = x + self.attention(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(tokens, width)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)

        def forward(self, ids):
            x = self.tokens(ids) + self.positions.weight
            for layer in self.layers:
                x = layer(x)
            return self.head(self.norm(x[:, -1]))

    return Decoder()


def decoder_path() -> Path:
    """The exported decoder (built on the first call; random weights, seed 0)."""
    return _exported("decoder", decoder_architecture, (1, 32), "int64", "ids")


def _exported(name: str, architecture, shape: tuple[int, ...], dtype: str,
              input_name: str) -> Path:
    """`architecture()` exported once to the temp folder on a zero input of `shape`, batch
    axis symbolic."""
    path = Path(tempfile.gettempdir()) / "onnxplain-bench" / f"{name}.onnx"
    if not path.exists():
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = architecture().eval()
        partial = path.with_suffix(".partial")
        torch.onnx.export(model, (torch.zeros(shape, dtype=getattr(torch, dtype)),),
                          str(partial),
                          input_names=[input_name], output_names=["logits"],
                          dynamic_axes={input_name: {0: "batch"}}, opset_version=17,
                          dynamo=False)
        partial.rename(path)
    return path


def external_copy(path: Path) -> Path:
    """The model at `path` saved with its weights as external data (model.onnx.data beside
    model.onnx, in a folder of its own), written on the first call."""
    target = path.parent / f"{path.stem}-external-data" / "model.onnx"
    if not target.exists():
        import onnx

        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name("partial.onnx")
        onnx.save(onnx.load(str(path)), str(partial), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="model.onnx.data")
        partial.rename(target)  # the data file's name is the one recorded: kept
    return target


def model_path(name: str) -> Path:
    if name.endswith("_external"):
        return external_copy(model_path(name.removesuffix("_external")))
    if name == "vgg19":
        return vgg19_path()
    if name == "decoder":
        return decoder_path()
    if name == "resnet18":
        import model_zoo

        return model_zoo.model_path("resnet18")
    return Path(name)


def child(mode: str, path: str, batch: int) -> None:
    """One measurement in this (fresh) process: prints a JSON line."""
    import onnxruntime as ort

    start = time.perf_counter()
    if mode == "load":
        from onnxplain.graph.model import Model

        before = rss()
        model = Model.load(path)
        held = rss() - before
        print(json.dumps({"peak": peak_rss(), "seconds": time.perf_counter() - start,
                          "held": held, "weights": weight_bytes(model)}))
        return
    if mode == "forward":
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        value = session.get_inputs()[0]
        session.run(None, {value.name: _batch(value.shape, batch, "int" in value.type)})
    elif mode == "saliency":
        import onnxplain

        explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
        spec = explainer.model.inputs[0]
        explainer.explain(_batch(spec.dims, batch, spec.numpy_dtype.kind in "iu"),
                          method="saliency", target=3)
    print(json.dumps({"peak": peak_rss(), "seconds": time.perf_counter() - start}))


def _batch(dims, batch: int, ids: bool = False) -> np.ndarray:
    """Random float32 inputs (int64 token ids below 1000 for `ids`) of these declared dims,
    the non-integer ones set to `batch`."""
    shape = [d if isinstance(d, int) else batch for d in dims]
    rng = np.random.default_rng(0)
    if ids:
        return rng.integers(0, 1000, shape, dtype=np.int64)
    return rng.standard_normal(shape).astype(np.float32)


def measure(mode: str, path: Path, batch: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(batch)],
                         capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def kept_bytes(model, batch: int) -> int:
    """Every float tensor the forward computes, for `batch` rows (dims known statically)."""
    total = 0
    for dims, itemsize in model.float_activations:
        if all(isinstance(d, int) for d in dims):
            total += int(np.prod(dims, dtype=np.int64)) * itemsize * batch
    return total


def weight_bytes(model) -> int:
    from onnxplain.graph.weights import tensor_bytes

    return sum(tensor_bytes(init) for init in model.proto.graph.initializer)


def export_sizes(model, path: Path, methods: list[str]) -> None:
    from onnxplain.exporter import export_explainer

    size = path.stat().st_size
    print(f"exported explainers (file {size / MB:.1f} MB):")
    for method in methods:
        proto = export_explainer(model, method)
        print(f"  {method:24s} {proto.ByteSize() / MB:9.1f} MB  {proto.ByteSize() / size:6.4f} x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg19")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=1,
                        help="fresh processes per measurement (the smallest peak is kept)")
    parser.add_argument("--exports", nargs="*", default=[])
    parser.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "BATCH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    from onnxplain.graph.model import Model

    path = model_path(args.model)
    model = Model.load(path)  # once, for the activation sizes and the exports
    print(machine())
    base = measure("baseline", path, 1)["peak"]
    loads = [measure("load", path, 1) for _ in range(args.repeats)]
    stored = sum(file.stat().st_size for file in (path, path.with_name(path.name + ".data"))
                 if file.exists())
    print(f"{args.model}: weights {weight_bytes(model) / MB:.0f} MB, files "
          f"{stored / MB:.0f} MB; interpreter baseline {base / MB:.0f} MB (peak "
          "RSS of whole processes, MB); held after Model.load "
          f"{min(r['held'] for r in loads) / MB:.0f} MB "
          f"({min(r['seconds'] for r in loads):.2f} s)")
    print(f"{'batch':>5} {'forward':>9} {'saliency':>9} {'kept':>9} {'ratio':>7} "
          f"{'goal':>9} {'fwd s':>7} {'sal s':>7}", flush=True)
    for batch in args.batches:
        runs = {mode: [measure(mode, path, batch) for _ in range(args.repeats)]
                for mode in ("forward", "saliency")}
        best = {mode: min(r["peak"] for r in found) for mode, found in runs.items()}
        kept = kept_bytes(model, batch)
        goal = 1.5 * best["forward"] + kept
        print(f"{batch:>5} {best['forward'] / MB:>9.0f} {best['saliency'] / MB:>9.0f} "
              f"{kept / MB:>9.0f} {best['saliency'] / best['forward']:>7.2f} "
              f"{goal / MB:>9.0f} {min(r['seconds'] for r in runs['forward']):>7.2f} "
              f"{min(r['seconds'] for r in runs['saliency']):>7.2f}", flush=True)
    if args.exports:
        export_sizes(model, path, args.exports)


if __name__ == "__main__":
    main()
