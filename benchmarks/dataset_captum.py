"""explain-dataset against its peer: Captum's Saliency over a torch DataLoader, on the same
JPEG files, the same model and the same preprocessing, in one process (issue 20).

    python benchmarks/dataset_captum.py [--images 2000] [--images-dir DIR] [--batch 32]
        [--repeats 2] [--loader-workers 1] [--torch-threads 2]

The images are dataset_throughput.py's (random RGB JPEGs at 224x224 in class folders,
generated once per --images-dir). The model is the zoo's ResNet-18: its ONNX file for
onnxplain, its torch original with the exported weights (model_zoo.load_torch) for Captum.
Before timing, the script checks on --check images that the two agree: torch's logits equal
ONNX Runtime's within 1e-4, and Captum's saliency maps equal onnxplain's (within 1e-2
of their norm).

Each repeat times both, the order alternating from one repeat to the next:
  onnxplain  onnxplain.explain_dataset over the folder, --batch rows per batch, CPU provider:
             reading (a reader thread), explaining the predicted class, writing Parquet
  captum     a DataLoader (--loader-workers processes decoding; 1 leaves the 2 cores'
             other one to torch) over an ImageFolder-style dataset that reads each file with
             PIL and onnxplain's default preprocessing for the model (resize 224, centre crop
             224, /255), then per batch the predicted class (one no-grad forward, as a Captum
             user explaining the prediction does) and Saliency.attribute; the maps are
             turned into numpy arrays and dropped (nothing is written: in Captum's favour)
each timed around the whole call (onnxplain's session build, the DataLoader's worker start
included), and prints rows/s per repeat, the medians and their ratio, beside the CPU model
and its vector extensions.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import Saliency

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import machine  # noqa: E402
from dataset_throughput import image_folder, run_engine  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.images import (  # noqa: E402
    ImagePreprocessing,
    default_preprocessing,
    is_image_file,
    load_image,
)


class ImageFolderDataset(torch.utils.data.Dataset):
    """torchvision's ImageFolder without torchvision: the image files under `root`, sorted,
    labelled by their class folder, each read with PIL and onnxplain's preprocessing."""

    def __init__(self, root: Path, prep: ImagePreprocessing):
        files = sorted(path for path in root.rglob("*") if is_image_file(path.name))
        classes = sorted({path.parent.name for path in files})
        self.items = [(path, classes.index(path.parent.name)) for path in files]
        self.prep = prep

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        return torch.from_numpy(load_image(path, self.prep)), label


def captum_run(model: torch.nn.Module, dataset: ImageFolderDataset, batch: int,
               workers: int) -> int:
    """Saliency maps of the predicted class for every image; the number of rows."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers)
    saliency = Saliency(model)
    rows = 0
    for x, _ in loader:
        with torch.no_grad():
            target = model(x).argmax(1)
        saliency.attribute(x.requires_grad_(True), target=target).numpy()
        rows += len(x)
    return rows


def check_same_model(model: torch.nn.Module, path: Path, dataset: ImageFolderDataset,
                     count: int) -> None:
    """Torch and ONNX Runtime agree on `count` images (logits within 1e-4), and so do
    Captum's and onnxplain's saliency maps: the two sides compute the same thing."""
    import onnxruntime

    x = torch.stack([dataset[index][0] for index in range(count)])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (ort_logits,) = session.run(None, {name: x.numpy()})
    with torch.no_grad():
        torch_logits = model(x).numpy()
    logits_gap = float(np.abs(torch_logits - ort_logits).max())
    if logits_gap > 1e-4:
        sys.exit(f"torch and ONNX Runtime logits differ by {logits_gap:.2e} (> 1e-4): not the "
                 "same model")
    result = onnxplain.Explainer(path, providers="cpu", progress=False).explain(
        x.numpy(), method="saliency")
    ours = result[name]
    theirs = Saliency(model).attribute(x.clone().requires_grad_(True),
                                       target=torch.from_numpy(ort_logits.argmax(1))).numpy()
    # A norm, not the largest gap: at 224x224, float32 rounding flips a ReLU or max-pool tie
    # now and then (model_zoo's resnet18_64 exists for exact oracles), moving a few pixels.
    map_gap = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    if map_gap > 1e-2:
        sys.exit(f"Captum's and onnxplain's saliency maps differ by {map_gap:.2e} of their "
                 "norm (> 1e-2)")
    print(f"same model: logits within {logits_gap:.1e} on {count} images, saliency maps "
          f"within {map_gap:.1e} of their norm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--images-dir", type=Path,
                        help="where the images are generated once and reused (default: a "
                             "temporary folder)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--check", type=int, default=4, help="images the models are compared on")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    path = model_zoo.model_path("resnet18")
    model = model_zoo.load_torch("resnet18")
    spec = onnxplain.Explainer(path, providers="cpu", progress=False).model.inputs[0]
    print(machine())
    print(f"onnxplain {onnxplain.__version__}, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, DataLoader with {args.loader_workers} worker "
          f"process(es), batch {args.batch}, {args.images} images")
    with tempfile.TemporaryDirectory() as work:
        folder = image_folder(args.images_dir or Path(work) / "images", args.images,
                              tuple(spec.dims[2:]))
        dataset = ImageFolderDataset(folder, default_preprocessing(spec))
        check_same_model(model, path, dataset, min(args.check, len(dataset)))

        def onnxplain_run(repeat: int) -> int:
            out = Path(work) / f"out-{repeat}"
            summary = run_engine("local", path, folder, out, "saliency", args.batch, "cpu")
            shutil.rmtree(out)
            return summary["explained"]

        runs = {"onnxplain": onnxplain_run,
                "captum": lambda _: captum_run(model, dataset, args.batch, args.loader_workers)}
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for repeat in range(args.repeats):
            order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
            for name in order:
                start = time.perf_counter()
                rows = runs[name](repeat)
                rates[name].append(rows / (time.perf_counter() - start))
            print(f"repeat {repeat}: " + ", ".join(
                f"{name} {rates[name][-1]:.1f} rows/s" for name in order))
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"median rows/s: onnxplain {median['onnxplain']:.1f}, captum {median['captum']:.1f}; "
          f"onnxplain / captum {median['onnxplain'] / median['captum']:.2f}")


if __name__ == "__main__":
    main()
