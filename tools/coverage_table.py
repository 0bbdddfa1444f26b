"""Architecture coverage table for the README: compile every supported architecture and summarise.

For each architecture this runs `adans-compile` (one subprocess per row)
with a small search budget and reads its report.json: channel groups found,
groups frozen and why, the numerical validation error of the emitted model
against the substituted one, and the MACs reduction the search reached.

Real weights where the project has them (../shared/data: CIFAR ResNet-20/56,
torchvision MobileNetV2, TF-slim MobileNetV1 0.5/160 and 0.75/192), scored
on real images; random weights for the others (nothing may be downloaded),
whose rows show structure only: with random weights top-1 is ~0, so the
accuracy constraint never binds and the MACs column is what the search
reaches unconstrained in its budget, not a claim about a trained model.

    python tools/coverage_table.py                       # all rows, table on stdout
    python tools/coverage_table.py --only resnet18 alexnet
    python tools/coverage_table.py --readme README.md    # replace the table in README's section
    python tools/coverage_table.py --only densenet --readme README.md --merge
                                  # re-run some rows, keep the README's other rows and their provenance

Rows that fail are kept in the table with their one-line error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TF = ("--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--label-offset", "1")
BEGIN, END = "<!-- coverage-table:begin -->", "<!-- coverage-table:end -->"

# Search budgets (kept small so the whole table runs in well under an hour on 2 CPU cores).
REAL_BUDGET = ("--samples", "6", "--iterations", "3", "--boundary-rounds", "2", "--max-accuracy-drop", "2")
RANDOM_BUDGET = ("--samples", "4", "--iterations", "2", "--boundary-rounds", "2", "--max-accuracy-drop", "2")
CIFAR_IMAGES, IMAGENET_IMAGES, RANDOM_IMAGES = 500, 100, 16


@dataclass(frozen=True)
class Row:
    name: str  # what the table shows
    arch: str | None  # --arch (None for .onnx and for TorchScript)
    weights: str | None  # file under ../shared/data, or None for random weights
    data: str  # "cifar" or "imagenet"
    size: int
    extra: tuple[str, ...] = field(default=())
    onnx: str | None = None  # "user" (torch.onnx.export defaults: BatchNorm folded) or "keep-bn"
    methods: str = "ps"


ROWS = [
    Row("CIFAR ResNet-20", "cifar_resnet20", "cifar10_resnets/resnet20.th", "cifar", 32, methods="ps"),
    Row("CIFAR ResNet-20 (d,ps)", "cifar_resnet20", "cifar10_resnets/resnet20.th", "cifar", 32, methods="d,ps"),
    Row("CIFAR ResNet-56", "cifar_resnet56", "cifar10_resnets/resnet56.th", "cifar", 32),
    Row("MobileNetV2 (torchvision)", "torchvision:mobilenet_v2", "imagenet/mobilenet_v2.pth", "imagenet", 224),
    Row("TF MobileNetV1 0.5/160", "tf_mobilenet_v1_0.5_160", "imagenet/mobilenet_v1_0.5_160.pth", "imagenet", 160, TF),
    Row("TF MobileNetV1 0.75/192", "tf_mobilenet_v1_0.75_192", "imagenet/mobilenet_v1_0.75_192.pth", "imagenet", 192, TF),
    Row("TF MobileNetV1 0.5/160 as .onnx", "tf_mobilenet_v1_0.5_160", "imagenet/mobilenet_v1_0.5_160.pth", "imagenet", 160, TF,
        onnx="user"),
    Row("ResNet-18", "torchvision:resnet18", None, "imagenet", 224),
    Row("ResNet-18 as .onnx (BN kept)", "torchvision:resnet18", None, "imagenet", 224, onnx="keep-bn"),
    Row("ResNet-50", "torchvision:resnet50", None, "imagenet", 224),
    Row("MobileNetV3-Small", "torchvision:mobilenet_v3_small", None, "imagenet", 224),
    Row("GoogLeNet", "torchvision:googlenet", None, "imagenet", 224),
    Row("VGG-11-BN", "torchvision:vgg11_bn", None, "imagenet", 224),
    Row("AlexNet", "torchvision:alexnet", None, "imagenet", 224),
    # Issue 16: grouped convolutions, squeeze-excitation, channel shuffle and split, dense concatenation,
    # channels-last MLPs with LayerNorm.
    Row("ResNeXt-50 32x4d", "torchvision:resnext50_32x4d", None, "imagenet", 224),
    Row("RegNetY-400MF", "torchvision:regnet_y_400mf", None, "imagenet", 224),
    Row("ShuffleNetV2 x1.0", "torchvision:shufflenet_v2_x1_0", None, "imagenet", 224),
    Row("EfficientNet-B0", "torchvision:efficientnet_b0", None, "imagenet", 224),
    Row("DenseNet-121", "torchvision:densenet121", None, "imagenet", 224),
    Row("ConvNeXt-Tiny", "torchvision:convnext_tiny", None, "imagenet", 224),
    Row("MnasNet 1.0", "torchvision:mnasnet1_0", None, "imagenet", 224),
    Row("MobileNetV3-Large", "torchvision:mobilenet_v3_large", None, "imagenet", 224),
]


# -- data ---------------------------------------------------------------------


def cifar_npz(work: Path, n: int) -> Path:
    """The first n of the 4,000 lossless CIFAR-10 training images (the paper scores on training images)."""
    path = work / f"cifar_val_{n}.npz"
    if not path.exists():
        with np.load(SHARED / "cifar10" / "train_lossless_4000.npz") as d:
            np.savez(path, x=d["x"][:n], y=d["y"][:n])
    return path


def imagenet_npz(work: Path, n: int, size: int) -> Path:
    """n ILSVRC2012 validation images, short side resized to size/0.875 and centre-cropped to size."""
    from PIL import Image

    path = work / f"imagenet_val_{n}_{size}.npz"
    if path.exists():
        return path
    with tarfile.open(SHARED / "imagenet" / "val_1300.tar") as tar:
        listing = tar.extractfile("ILSVRC2012_VAL_SET/dataset.txt").read().decode()
        entries = []
        for line in listing.splitlines():
            if "," in line:
                name, label = line.rsplit(",", 1)
                entries.append((name.strip().removeprefix("./"), int(label)))
        entries = entries[:n]
        images = []
        for name, _ in entries:
            with Image.open(io.BytesIO(tar.extractfile(f"ILSVRC2012_VAL_SET/{name}").read())) as im:
                im = im.convert("RGB")
                short = round(size / 0.875)
                scale = short / min(im.size)
                im = im.resize((max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))), Image.BILINEAR)
                left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
                images.append(np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8))
    np.savez(path, x=np.stack(images), y=np.array([label for _, label in entries], dtype=np.int64))
    return path


# -- models -------------------------------------------------------------------


def random_weights(arch: str, path: Path, seed: int = 0) -> Path:
    """Random weights with non-trivial BatchNorm statistics (identity BatchNorms would hide slicing bugs)."""
    import torch

    from adans_toolchain.frontend.loading import build_architecture

    torch.manual_seed(seed)
    module = build_architecture(arch).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    torch.save(module.state_dict(), path)
    return path


def to_onnx(arch: str, weights: Path, size: int, path: Path, mode: str) -> Path:
    """Export the way a user would: torch.onnx.export, names as the exporter makes them."""
    import torch

    from adans_toolchain.frontend.loading import load_model

    module = load_model(weights, arch).module.eval()
    training = torch.onnx.TrainingMode.PRESERVE if mode == "keep-bn" else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(module, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, training=training,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})
    return path


# -- one row ------------------------------------------------------------------


def run_row(row: Row, work: Path, threads: int) -> dict:
    real = row.weights is not None
    tag = re.sub(r"[^A-Za-z0-9]+", "_", row.name).strip("_").lower()
    if row.data == "cifar":
        data = cifar_npz(work, CIFAR_IMAGES if real else RANDOM_IMAGES)
    else:
        data = imagenet_npz(work, IMAGENET_IMAGES if real else RANDOM_IMAGES, row.size)
    weights = SHARED / row.weights if real else random_weights(row.arch, work / f"{tag}.pt")
    model_args = [str(weights), "--arch", row.arch]
    if row.onnx:
        model_args = [str(to_onnx(row.arch, weights, row.size, work / f"{tag}.onnx", row.onnx))]
    out = work / f"out_{tag}"
    budget = REAL_BUDGET if real else RANDOM_BUDGET
    images = len(np.load(data)["y"])
    argv = [*model_args, "--data", str(data), "--methods", row.methods, *row.extra, *budget,
            "--bn-recalibrate", str(images), "--threads", str(threads), "--no-measure", "--overwrite", "-o", str(out)]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "adans_toolchain.cli.compile", *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    result = {"row": row.name, "weights": "real" if real else "random", "input": row.size, "images": images,
              "methods": row.methods, "seconds": seconds, "command": "adans-compile " + " ".join(argv)}
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        result["error"] = (errors or proc.stderr.strip().splitlines() or ["?"])[-1]
        return result
    report = json.loads((out / "report.json").read_text())
    v = report["validation"]
    result.update(
        groups=len(report["groups"]),
        frozen=[{"id": g["id"], "reason": g["reason"]} for g in report["frozen_groups"]],
        # Relative to the largest |logit| or the absolute floor's equivalent, not widened by a measured float32 error.
        validation=v["max_abs_diff"] / max(v["largest_logit"], v["absolute_floor"] / v["tolerance"]),
        float32_error=v.get("float32_error"),
        macs_ratio=report["compressed"]["macs"] / report["baseline"]["macs"],
        top1=(report["baseline"]["top1_val"], report["compressed"]["top1_val"]),
        notes=report["notes"],
    )
    return result


# -- rendering ----------------------------------------------------------------


def short_reason(reason: str) -> str:
    if reason.endswith("is a model input"):
        return "input"
    if reason.endswith("is a model output"):
        return "logits"
    if reason.startswith("a single unit"):
        return "single unit"
    m = re.match(r"(\w+) node '[^']*': (.*)", reason)
    if m and m.group(1) == "LayerNormalization" and "span the channel axis" in m.group(2):
        return "LayerNorm over channels"
    return f"{m.group(1)}: {m.group(2)}" if m else reason


def frozen_text(frozen: list[dict]) -> str:
    counts: dict[str, int] = {}
    for f in frozen:
        key = short_reason(f["reason"])
        counts[key] = counts.get(key, 0) + 1
    return f"{len(frozen)}: " + ", ".join(k if n == 1 else f"{k} (x{n})" for k, n in counts.items())


HEADER = [
    "| architecture | weights, input | groups | frozen (why) | validation error | MACs after | top-1 VAL before → after | minutes |",
    "|---|---|---|---|---|---|---|---|",
]


def row_line(r: dict) -> str:
    head = f"| {r['row']} | {r['weights']}, {r['input']}px |"
    minutes = f"{r['seconds'] / 60:.1f}"
    if "error" in r:
        return f"{head} – | **failed**: {r['error']} | – | – | – | {minutes} |"
    top1 = f"{r['top1'][0]:.1f} → {r['top1'][1]:.1f} %" if r["weights"] == "real" else "(random weights)"
    validation = f"{r['validation']:.1e}"
    if r.get("float32_error") is not None:  # the plain tolerance did not hold: see lowering/validate.py
        validation += f" (reference's float32 error {r['float32_error']:.1e})"
    return (
        f"{head} {r['groups']} | {frozen_text(r['frozen'])} | {validation} | "
        f"{r['macs_ratio']:.1%} of baseline | {top1} | {minutes} |"
    )


def render(results: list[dict]) -> str:
    return "\n".join(HEADER + [row_line(r) for r in results])


def merged_block(previous: str, results: list[dict], note: str) -> str:
    """The README's previous table with `results`' rows replaced or added (in ROWS order), and `note` appended.

    Rows from the previous table keep their figures; a row from before the
    minutes column gets '–' there.
    """
    old_rows: dict[str, str] = {}
    notes: list[str] = []
    for line in previous.strip().splitlines():
        if line.startswith("| ") and not line.startswith("| architecture"):
            name = line.split("|")[1].strip()
            cells = line.count("|") - 1
            old_rows[name] = line if cells >= len(HEADER[1].split("|")) - 2 else line + " – |"
        elif line.strip() and not line.startswith("|"):
            notes.append(line)
    new_rows = {r["row"]: row_line(r) for r in results}
    order = [row.name for row in ROWS] + [n for n in old_rows if n not in {row.name for row in ROWS}]
    lines = [new_rows.get(n) or old_rows[n] for n in order if n in new_rows or n in old_rows]
    return "\n".join(HEADER + lines) + "\n\n" + "\n\n".join([*notes, note])


def provenance(results: list[dict], argv: list[str], *, merged: bool = False, conditions: str = "") -> str:
    total = sum(r["seconds"] for r in results)
    cpu = platform.processor() or platform.machine()
    what = f"The rows {', '.join(r['row'] for r in results)} were produced" if merged else "Produced"
    return (
        f"{what} by `python tools/coverage_table.py {' '.join(argv)}`".rstrip() + f" on {dt.date.today().isoformat()}, "
        f"{os.cpu_count()}-core {cpu} CPU ({platform.system()}), {total / 60:.0f} min in all. "
        f"Budget per row: real weights {' '.join(REAL_BUDGET)} on {CIFAR_IMAGES} CIFAR-10 training images or "
        f"{IMAGENET_IMAGES} ImageNet validation images; random weights {' '.join(RANDOM_BUDGET)} on {RANDOM_IMAGES} images; "
        "BatchNorm re-estimated on the same images; `--methods ps` unless the row says otherwise."
        + (f" {conditions}" if conditions else "")
    )


def readme_block(readme: Path) -> str:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers")
    return text.split(BEGIN, 1)[1].split(END, 1)[0]


def write_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    readme_block(readme)  # the markers are there
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", help="rows whose name contains any of these (case-insensitive)")
    p.add_argument("--work", type=Path, help="working directory (default: a fresh temporary one)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per compile (default 1)")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--readme", type=Path, help="replace the table between the coverage-table markers of this file")
    p.add_argument("--merge", action="store_true",
                   help="with --readme: replace only the rows run now, keep the others and their provenance notes")
    p.add_argument("--conditions", default="", help="a sentence on the run's conditions, appended to its provenance note")
    args = p.parse_args(argv)
    if args.merge and not args.readme:
        p.error("--merge needs --readme")
    rows = [r for r in ROWS if not args.only or any(o.lower() in r.name.lower() for o in args.only)]
    work = args.work or Path(tempfile.mkdtemp(prefix="adans-coverage-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for row in rows:
        print(f"[coverage] {row.name} ...", file=sys.stderr, flush=True)
        results.append(run_row(row, work, args.threads))
        r = results[-1]
        print(f"[coverage] {row.name}: {'FAILED ' + r['error'] if 'error' in r else 'ok'} ({r['seconds']:.0f} s)",
              file=sys.stderr, flush=True)
    shown = [a for i, a in enumerate(argv) if a != "--conditions" and (i == 0 or argv[i - 1] != "--conditions")]
    note = provenance(results, shown, merged=args.merge, conditions=args.conditions)
    block = merged_block(readme_block(args.readme), results, note) if args.merge else render(results) + "\n\n" + note
    print(block)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.readme:
        write_readme(args.readme, block)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
