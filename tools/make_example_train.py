"""Build the bundled example's training images: adans_toolchain/examples/cifar10_train_3000.tar.gz.

Images 1,000-3,999 of ../shared/data/cifar10/train_lossless_4000.npz (the
first 1,000 are the example's VAL images, so training never sees them; TEST
comes from the official test set), as JPEG quality 90 in an ImageFolder tar
(`train/<class>/<index>.jpg`), gzip-compressed: about 3.5 MB where the same
images as a compressed npz take 8.5 MB. The archive is byte-for-byte
reproducible (fixed order, times and owners).

    python tools/make_example_train.py
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "cifar10" / "train_lossless_4000.npz"
TARGET = ROOT / "adans_toolchain" / "examples" / "cifar10_train_3000.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FIRST, LAST = 1000, 4000
QUALITY = 90


def _member(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
    return info


def main() -> None:
    data = np.load(SOURCE)
    x, y = data["x"][FIRST:LAST], data["y"][FIRST:LAST]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_member("train/", 0, directory=True))
        for name in CLASSES:
            tar.addfile(_member(f"train/{name}/", 0, directory=True))
        for i in np.argsort(y, kind="stable"):
            jpeg = io.BytesIO()
            Image.fromarray(x[i]).save(jpeg, "JPEG", quality=QUALITY)
            tar.addfile(_member(f"train/{CLASSES[y[i]]}/{FIRST + i:04d}.jpg", jpeg.tell()), io.BytesIO(jpeg.getvalue()))
    with gzip.GzipFile(TARGET, "wb", mtime=0) as out:
        out.write(raw.getvalue())
    print(f"{TARGET}: {LAST - FIRST} images, {TARGET.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
