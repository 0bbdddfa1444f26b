"""Re-measure a committed headline result (benchmarks/<name>/) on this machine: top-1 and speed of model.onnx
beside baseline.onnx, with the preprocessing its report.json recorded.

    python tools/remeasure.py benchmarks/resnet20-example --data adans_toolchain/examples/cifar10_test_500.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx

from adans_toolchain.frontend.data import Preprocessing, load_image_set
from adans_toolchain.runtime.measure import measured_speedup
from adans_toolchain.runtime.sessions import top1


def _preprocessing(report: dict) -> Preprocessing:
    recorded = report["data"]["preprocessing"]
    size = recorded.get("input_size")
    return Preprocessing(mean=tuple(recorded["mean"]), std=tuple(recorded["std"]), input_size=tuple(size) if size else None,
                         resize_ratio=recorded["resize_ratio"], label_offset=recorded["label_offset"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="a benchmarks/<name> folder: model.onnx, baseline.onnx, report.json")
    p.add_argument("--data", required=True, help="labelled images (.npz or ImageFolder) to score both models on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = p.parse_args()
    report = json.loads((args.folder / "report.json").read_text())
    models = {name: onnx.load(str(args.folder / f"{name}.onnx")) for name in ("baseline", "model")}
    data = load_image_set(args.data, _preprocessing(report))
    x, y = data.x.numpy(), data.y.numpy()
    for name, model in models.items():
        print(f"{name}: top-1 {top1(model, x, y, threads=args.threads, batch_size=64):.2f} % on {len(y)} images of {args.data}")
    speed = measured_speedup(models["baseline"], models["model"], tuple(data.image_shape), tuple(args.batches),
                             threads=args.threads)
    for batch in args.batches:
        s = speed[f"batch_{batch}"]
        print(f"batch {batch}: baseline {s['baseline_ms']:.3f} ms, model {s['compressed_ms']:.3f} ms, "
              f"speedup {s['speedup']:.2f}x ({args.threads} threads, {speed['method']})")


if __name__ == "__main__":
    main()
