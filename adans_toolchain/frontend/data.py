"""Labelled image sets from an `.npz` file or an ImageFolder directory.

Images end up as one float32 NCHW tensor, already normalised, because the
search evaluates the same few thousand images hundreds of times: decoding
and normalising once is what makes each evaluation cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from adans_toolchain.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become model inputs; recorded in the report so users can reproduce it."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: tuple[int, int] | None = None  # (H, W); None: take the data's own size
    resize_ratio: float = 0.875  # ImageFolder: resize the short side to size / ratio, centre-crop
    label_offset: int = 0  # added to every label (e.g. 1 for 1001-class TF models)

    def as_dict(self) -> dict:
        return {
            "mean": list(self.mean), "std": list(self.std),
            "input_size": list(self.input_size) if self.input_size else None,
            "resize_ratio": self.resize_ratio, "label_offset": self.label_offset,
            "pixels": "RGB in [0,1], (x - mean) / std, NCHW float32",
        }


@dataclass(frozen=True)
class ImageSet:
    x: torch.Tensor  # float32, N x C x H x W, normalised
    y: torch.Tensor  # int64, N
    source: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, n: int) -> "ImageSet":
        return ImageSet(self.x[:n], self.y[:n], f"{self.source} (first {min(n, len(self))})")

    def take(self, indices: Sequence[int] | np.ndarray) -> "ImageSet":
        """The images at `indices`, in that order (a copy)."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(self.x[index], self.y[index], self.source)

    def part(self, start: int, stop: int, what: str) -> "ImageSet":
        """Images start..stop-1 (a view, no copy), `what` named in the source."""
        return ImageSet(self.x[start:stop], self.y[start:stop], f"{self.source} ({what})")


def _normalise_uint8_nhwc(pixels: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, -1, 1, 1)
    if x.shape[1] != mean.shape[1]:
        raise DataError(
            f"images have {x.shape[1]} channel(s) but the normalisation has {mean.shape[1]} values "
            "(--mean/--std, default ImageNet's); give one --mean/--std value per image channel"
        )
    return x.sub_(mean).div_(std).contiguous()


def _load_npz(path: Path, prep: Preprocessing, explicit_normalisation: bool) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files or "y" not in archive.files:
                raise DataError(f"{path} must hold arrays 'x' (images) and 'y' (labels); it has {archive.files}")
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile/numpy raise many types on damaged files
        raise DataError(f"cannot read {path} as an .npz archive ({e}); is the file complete?") from e
    if x.ndim != 4:
        raise DataError(f"{path}: 'x' must be 4-D images (NHWC uint8 or NCHW float), got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: 'y' must be one label per image ({len(x)}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: labels 'y' must be integers, got {y.dtype}")
    if x.dtype == np.uint8:
        if x.shape[-1] not in (1, 3, 4) and x.shape[1] in (1, 3, 4):
            x = x.transpose(0, 2, 3, 1)  # NCHW uint8: accept, normalise as NHWC
        images = _normalise_uint8_nhwc(x, prep)
    elif np.issubdtype(x.dtype, np.floating):
        if explicit_normalisation:
            raise DataError(
                f"{path} holds float images, which are taken as already preprocessed; "
                "drop --mean/--std or give uint8 images"
            )
        images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        bad = int(images.numel() - torch.isfinite(images).sum())
        if bad:
            # Caught here, not by a search whose every accuracy would be NaN.
            raise DataError(f"{path}: {bad} image values are not finite (NaN or infinity); fix or drop those images")
    else:
        raise DataError(f"{path}: images must be uint8 (NHWC) or float (NCHW), got {x.dtype}")
    labels = torch.from_numpy(y.astype(np.int64)) + prep.label_offset
    if prep.input_size and tuple(images.shape[2:]) != tuple(prep.input_size):
        h, w = images.shape[2:]
        raise DataError(
            f"{path.name}: images are {h}x{w} but --input-size is {prep.input_size[0]} {prep.input_size[1]}; "
            "resize the data or drop --input-size"
        )
    return ImageSet(images, labels, str(path))


def _load_image_folder(root: Path, prep: Preprocessing, limit: int | None) -> ImageSet:
    from PIL import Image

    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, label))
    if not files:
        raise DataError(
            f"{root} holds no images in ImageFolder layout (one sub-folder per class, e.g. {root}/cat/0001.jpg)"
        )
    if limit is not None:
        files = _first_n_round_robin(files, limit)
    arrays = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                arrays.append(_resize_centre_crop(im.convert("RGB"), prep))
        except OSError as e:
            raise DataError(f"cannot decode image {f}: {e}") from e
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(
            f"{root}: images have different sizes {sorted(shapes)[:3]}; give --input-size H W to resize them"
        )
    pixels = np.stack(arrays)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64) + prep.label_offset
    return ImageSet(_normalise_uint8_nhwc(pixels, prep), labels, str(root))


def _first_n_round_robin(files: Sequence[tuple[Path, int]], n: int) -> list[tuple[Path, int]]:
    """First n images taking classes in turn, so a limited set still covers every class."""
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for item in files:
        by_class.setdefault(item[1], []).append(item)
    picked: list[tuple[Path, int]] = []
    depth = 0
    while len(picked) < n and any(depth < len(v) for v in by_class.values()):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(picked) < n:
                picked.append(by_class[label][depth])
        depth += 1
    return picked


def _resize_centre_crop(im, prep: Preprocessing) -> np.ndarray:
    from PIL import Image

    if prep.input_size is None or im.size == (prep.input_size[1], prep.input_size[0]):
        return np.asarray(im, dtype=np.uint8)
    h, w = prep.input_size
    short = round(min(h, w) / prep.resize_ratio)
    scale = short / min(im.size)
    im = im.resize((max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale))), Image.BILINEAR)
    left, top = (im.size[0] - w) // 2, (im.size[1] - h) // 2
    return np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)


# For training images, decoded a few at a time (frontend.training_data), prepared exactly as VAL images are.
def image_pixels(im, prep: Preprocessing) -> np.ndarray:
    """One PIL image as uint8 H x W x 3 pixels, resized and centre-cropped to prep.input_size."""
    return _resize_centre_crop(im.convert("RGB"), prep)


def normalise_pixels(pixels: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """uint8 N x H x W x C pixels as model inputs, float32 N x C x H x W."""
    return _normalise_uint8_nhwc(pixels, prep)


def check_labels_fit(what: str, labels, classes: int, fix: str) -> None:
    """One line refusing labels outside the model's `classes` outputs (`what`: whose labels; `fix`: what to do)."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        raise DataError(f"{what} labels range over {lo}..{hi} but the model has {classes} outputs; {fix}")


def load_image_set(
    path: str | Path, prep: Preprocessing, *, limit: int | None = None, explicit_normalisation: bool = False
) -> ImageSet:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data {path} does not exist")
    if path.is_dir():
        data = _load_image_folder(path, prep, limit)
    elif path.suffix == ".npz":
        data = _load_npz(path, prep, explicit_normalisation)
    else:
        raise DataError(f"data {path} must be an .npz file (arrays x, y) or an ImageFolder directory")
    if len(data) == 0:
        raise DataError(f"data {path} holds no images")
    if limit is not None and len(data) > limit:
        data = data.subset(limit)
    return data
