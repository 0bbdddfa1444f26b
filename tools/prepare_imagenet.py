"""Turn ../shared/data/imagenet/val_1300.tar into .npz files adans-compile reads.

Resize the short side to size/0.875 and centre-crop (the standard ImageNet
evaluation transform), uint8 NHWC. The first N images (default 500) are the
search's validation set, the rest the test set, so accuracy claims are made
on images the search never scored.

    python tools/prepare_imagenet.py --size 224 --out runs/data/imagenet224
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet" / "val_1300.tar"


def centre_crop(im: Image.Image, size: int, ratio: float = 0.875) -> np.ndarray:
    short = round(size / ratio)
    scale = short / min(im.size)
    im = im.convert("RGB").resize((max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))), Image.BILINEAR)
    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tar", type=Path, default=DEFAULT_TAR)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--val", type=int, default=500, help="images in the validation split (the rest is TEST)")
    p.add_argument("--out", type=Path, required=True, help="prefix: writes PREFIX_val.npz and PREFIX_test.npz")
    args = p.parse_args()
    with tarfile.open(args.tar) as tar:
        listing = tar.extractfile("ILSVRC2012_VAL_SET/dataset.txt").read().decode().splitlines()
        entries = [(line.split(",")[0].strip().removeprefix("./"), int(line.split(",")[1])) for line in listing if line.strip()]
        images = []
        for path, _ in entries:
            with Image.open(io.BytesIO(tar.extractfile(f"ILSVRC2012_VAL_SET/{path}").read())) as im:
                images.append(centre_crop(im, args.size))
    x = np.stack(images)
    y = np.array([label for _, label in entries], dtype=np.int64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(f"{args.out}_val.npz", x=x[: args.val], y=y[: args.val])
    np.savez(f"{args.out}_test.npz", x=x[args.val :], y=y[args.val :])
    print(f"{len(x)} images {args.size}x{args.size}: {args.val} VAL -> {args.out}_val.npz, {len(x) - args.val} TEST -> {args.out}_test.npz")


if __name__ == "__main__":
    main()
