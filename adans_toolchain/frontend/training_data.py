"""Training images for fine-tuning: .npz files, ImageFolder directories and tars of them, mixed.

VAL is decoded once into one float tensor because the search reads it
hundreds of times. A training set is read once per epoch and can be much
larger (the 50,000 CIFAR-10 JPEGs are 77 MB as JPEG, 600 MB as float32), so
image files are only indexed here and decoded on demand, a batch at a time,
in the fine-tune's DataLoader worker processes (`TrainingSet.__getitems__`).

Where images come from:
- `.npz` (arrays x, y): loaded and normalised as VAL is (`frontend.data`),
  labels as stored; its images must already have the model's input size.
- an ImageFolder directory (`ROOT/<class>/**/image.jpg`) or a tar of one
  (`.tar`, `.tar.gz`, `.tgz`; the class folders may sit under one top
  folder, as in `train/<class>/0001.jpg`): the sorted class folder names
  are labels 0..K-1, as torchvision's ImageFolder numbers them, and every
  such source must have the same class folders. Images are resized and
  centre-cropped to the model's input size as VAL images are.
  A plain tar is read in place, each member at its offset (no extraction:
  one `pread` per image, served from the page cache after the first
  epoch). A compressed tar cannot be read at an offset, so it is
  decompressed once, into memory; give a plain tar for sets larger than
  memory.

Nothing here is random. A sample is requested as (index, dy, dx, flip):
the caller (finetune.train) draws every image's shift and flip for an
epoch from (seed, epoch), and each request carries its own choices to
whichever worker decodes it, so the batches do not depend on the number of
workers.
"""

from __future__ import annotations

import bisect
import bz2
import dataclasses
import gzip
import io
import lzma
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Sequence

import numpy as np
import torch

from adans_toolchain.errors import DataError
from adans_toolchain.frontend.data import (
    IMAGE_SUFFIXES, ImageSet, Preprocessing, check_labels_fit, image_pixels, load_image_set, normalise_pixels,
)

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_COMPRESSED = {b"\x1f\x8b": gzip.decompress, b"BZh": bz2.decompress, b"\xfd7zXZ\x00": lzma.decompress}
_KINDS = "an .npz file (arrays x, y), an ImageFolder directory, or a tar of one (.tar, .tar.gz, .tgz)"


class SampleRequest(NamedTuple):
    """One image of a batch and how to augment it: move the crop window by (dy, dx) pixels, zero-filled, then
    mirror if `flip` (pixel (r, c) of the result is pixel (r + dy, c + dx) of the image)."""

    index: int
    dy: int = 0
    dx: int = 0
    flip: bool = False


# -- sources -------------------------------------------------------------------


class _Source:
    """One source's images and `labels` (ints, in the set's class order)."""

    name: str
    labels: np.ndarray
    classes: tuple[str, ...] | None  # ImageFolder class names; None for an npz (integer labels only)

    def __len__(self) -> int:
        return len(self.labels)

    def identity(self) -> list:
        """What a fine-tune checkpoint compares on resume: the source's kind, file name and size."""
        return [type(self).__name__.strip("_"), Path(self.name).name, len(self)]


class _TensorSource(_Source):
    """Images already decoded and normalised (an npz, or an ImageSet given directly)."""

    def __init__(self, images: ImageSet) -> None:
        self.name, self.images, self.classes = images.source, images.x, None
        self.labels = images.y.numpy()


class _EncodedSource(_Source):
    """Encoded image files (ImageFolder directory or tar), decoded on demand with the VAL preprocessing."""

    def __init__(self, name: str, classes: tuple[str, ...], members: list[str], labels: list[int], prep: Preprocessing) -> None:
        self.name, self.classes, self.members, self.prep = name, classes, members, prep
        self.labels = np.asarray(labels, dtype=np.int64) + prep.label_offset

    def encoded(self, i: int):
        """A file path or file object PIL can open."""
        raise NotImplementedError

    def pixels(self, i: int) -> np.ndarray:
        """Image i as uint8 H x W x 3 pixels at the model's input size."""
        from PIL import Image

        try:
            with Image.open(self.encoded(i)) as im:
                return image_pixels(im, self.prep)
        except OSError as e:  # PIL.UnidentifiedImageError is an OSError
            raise DataError(f"cannot decode training image {self.members[i]} in {self.name}: {e}; remove or replace it") from e

    def normalise(self, pixels: list[np.ndarray]) -> torch.Tensor:
        """Decoded images as model inputs, normalised as VAL is (on the stack: one vectorised pass)."""
        return normalise_pixels(np.stack(pixels), self.prep)


class _FolderSource(_EncodedSource):
    def encoded(self, i: int):
        return os.path.join(self.name, self.members[i])


class _TarSource(_EncodedSource):
    """Members of a tar, read at their offsets; `blob` holds a compressed tar's decompressed bytes."""

    def __init__(self, name, classes, members, labels, prep, offsets: np.ndarray, sizes: np.ndarray, blob: bytes | None) -> None:
        super().__init__(name, classes, members, labels, prep)
        self.offsets, self.sizes, self.blob = offsets, sizes, blob
        self._fd: int | None = None
        self._fd_pid = -1

    def __getstate__(self) -> dict:
        # A worker started by spawn or forkserver opens the tar itself.
        return {**self.__dict__, "_fd": None, "_fd_pid": -1}

    def encoded(self, i: int):
        offset, size = int(self.offsets[i]), int(self.sizes[i])
        if self.blob is not None:
            return io.BytesIO(memoryview(self.blob)[offset : offset + size])
        if self._fd_pid != os.getpid():  # one descriptor per process; pread keeps no shared file position
            self._fd, self._fd_pid = os.open(self.name, os.O_RDONLY), os.getpid()
        return io.BytesIO(os.pread(self._fd, size, offset))


# -- reading sources -----------------------------------------------------------


def _is_image(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES


def _image_folder_layout(paths: list[str], where: str) -> tuple[tuple[str, ...], list[str], list[int]]:
    """Classes, images (sorted as torchvision sorts them) and labels from 'class/.../image' paths."""
    images = [PurePosixPath(p).parts for p in paths if _is_image(p)]
    parts = [p for p in images if len(p) >= 2]  # images directly in the root belong to no class
    if not parts:
        found = f"{len(images)} images but no class folders" if images else "no images"
        raise DataError(
            f"{where} holds {found}; training images need ImageFolder layout (one folder per class, "
            "e.g. cat/0001.jpg): give the folder above the class folders, or a tar of it"
        )
    classes = tuple(sorted({p[0] for p in parts}))
    label_of = {name: label for label, name in enumerate(classes)}
    parts.sort()
    return classes, ["/".join(p) for p in parts], [label_of[p[0]] for p in parts]


def _read_folder(root: Path, prep: Preprocessing) -> _FolderSource:
    paths = [f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file()]
    classes, members, labels = _image_folder_layout(paths, str(root))
    # A class folder without images would shift every later label (VAL's loader counts it; torchvision refuses it).
    empty = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in classes)
    if empty:
        raise DataError(
            f"class folder {root / empty[0]} holds no images, so the sorted class folders would not number the "
            "classes as VAL does; add its images or remove it"
        )
    return _FolderSource(str(root), classes, members, labels, prep)


def _read_tar(path: Path, prep: Preprocessing) -> _TarSource:
    with open(path, "rb") as f:
        head = f.read(6)
    decompress = next((fn for magic, fn in _COMPRESSED.items() if head.startswith(magic)), None)
    try:
        blob = decompress(path.read_bytes()) if decompress else None
        with tarfile.open(fileobj=io.BytesIO(blob)) if blob is not None else tarfile.open(path, "r:") as tar:
            found = {m.name: (m.offset_data, m.size) for m in tar if m.isfile() and _is_image(m.name)}
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise DataError(f"cannot read {path} as a tar archive ({e}); is the file complete?") from e
    names = _strip_common_top_folders(list(found))
    classes, members, labels = _image_folder_layout(list(names), str(path))
    located = [found[names[m]] for m in members]
    offsets = np.array([o for o, _ in located], dtype=np.int64)
    sizes = np.array([s for _, s in located], dtype=np.int64)
    return _TarSource(str(path), classes, members, labels, prep, offsets, sizes, blob)


def _strip_common_top_folders(names: list[str]) -> dict[str, str]:
    """{path below the common top folders: member name}: 'train/cat/1.jpg' -> 'cat/1.jpg'.

    Folders are stripped while every image shares the first one and sits at
    least two folders below it (so what remains is still class/image).
    """
    parts = {name: PurePosixPath(name).parts for name in names}
    while parts and all(len(p) >= 3 for p in parts.values()) and len({p[0] for p in parts.values()}) == 1:
        parts = {name: p[1:] for name, p in parts.items()}
    return {"/".join(p): name for name, p in parts.items()}


def _read_source(path: Path, prep: Preprocessing, image_shape: tuple[int, int, int], explicit_normalisation: bool) -> _Source:
    # Image files are resized to the model's input size as VAL images are; an npz is never resized.
    decoded = dataclasses.replace(prep, input_size=tuple(image_shape[1:]))
    if not path.exists():
        raise DataError(f"training data {path} does not exist; give {_KINDS}")
    if path.is_dir():
        return _read_folder(path, decoded)
    if path.suffix == ".npz":
        images = load_image_set(path, dataclasses.replace(prep, input_size=None), explicit_normalisation=explicit_normalisation)
        if images.image_shape != image_shape:
            raise DataError(
                f"training images in {path} are {_shape(images.image_shape)} but the model takes {_shape(image_shape)}; "
                "store them at the model's input size (an .npz is not resized), or give them as an ImageFolder or tar"
            )
        return _TensorSource(images)
    if path.name.lower().endswith(_TAR_SUFFIXES):
        return _read_tar(path, decoded)
    raise DataError(f"training data {path} must be {_KINDS}")


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


# -- the training set ----------------------------------------------------------


class TrainingSet(torch.utils.data.Dataset):
    """Labelled training images from one or more sources, one index space (sources in the order given).

    A DataLoader fetches whole batches (`__getitems__`): requested images are
    decoded, normalised together as VAL is, and shifted and mirrored as each
    request says. An image that cannot be decoded makes the batch its one-line
    message instead, so the fine-tune raises it as a DataError rather than as
    a DataLoader worker's traceback.
    """

    def __init__(self, sources: Sequence[_Source], image_shape: tuple[int, int, int]) -> None:
        self.sources = list(sources)
        self.image_shape = tuple(image_shape)
        self._starts = np.cumsum([0] + [len(s) for s in self.sources]).tolist()
        self.labels = torch.from_numpy(np.concatenate([s.labels for s in self.sources]).astype(np.int64))

    @classmethod
    def from_images(cls, images: ImageSet) -> "TrainingSet":
        """Images already in memory (e.g. VAL-style data loaded by frontend.data)."""
        return cls([_TensorSource(images)], images.image_shape)

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def decodes_images(self) -> bool:
        """Whether reading an image means decoding a file (worth doing in worker processes)."""
        return any(isinstance(s, _EncodedSource) for s in self.sources)

    def identity(self) -> list:
        """Sources as [kind, file name, images], for a fine-tune checkpoint to check on resume."""
        return [s.identity() for s in self.sources]

    def describe(self) -> str:
        return " + ".join(f"{Path(s.name).name} ({len(s):,})" for s in self.sources)

    def __getitems__(self, requests: Sequence[SampleRequest]) -> tuple[torch.Tensor, torch.Tensor] | str:
        """The batch (images, labels) of `requests`, or the message of an image that cannot be decoded."""
        images = torch.empty((len(requests), *self.image_shape))
        decoded: dict[int, tuple[list[int], list[np.ndarray]]] = {}  # source -> (batch slots, pixels)
        for slot, request in enumerate(requests):
            which = bisect.bisect_right(self._starts, request.index) - 1
            source, i = self.sources[which], request.index - self._starts[which]
            if isinstance(source, _TensorSource):
                images[slot] = source.images[i]
                continue
            try:
                pixels = source.pixels(i)
            except DataError as e:
                return str(e)
            slots, stack = decoded.setdefault(which, ([], []))
            slots.append(slot)
            stack.append(pixels)
        for which, (slots, stack) in decoded.items():
            images[slots] = self.sources[which].normalise(stack)
        labels = self.labels[torch.tensor([r.index for r in requests], dtype=torch.int64)]
        return _shift_and_flip(images, requests), labels

    def __getitem__(self, request: SampleRequest) -> tuple[torch.Tensor, int]:
        batch = self.__getitems__([request])
        if isinstance(batch, str):
            raise DataError(batch)
        return batch[0][0], int(batch[1][0])


def _shift_and_flip(images: torch.Tensor, requests: Sequence[SampleRequest]) -> torch.Tensor:
    """Each image's crop window moved by its (dy, dx), zeros (the mean pixel, after normalisation) beyond the
    image, then mirrored if asked: a padded random crop and flip.

    Copies the overlap into zeros rather than padding the batch, which costs
    more than the crops (F.pad of a 128-image CIFAR batch: ~30 ms here).
    """
    if not any(r.dy or r.dx or r.flip for r in requests):
        return images
    _, _, h, w = images.shape
    out = torch.zeros_like(images)
    for k, (_, dy, dx, flip) in enumerate(requests):
        top, bottom, left, right = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)
        out[k, :, top:bottom, left:right] = images[k, :, top + dy : bottom + dy, left + dx : right + dx]
        if flip:
            out[k] = out[k].flip(-1)
    return out


def batch_as_fetched(batch):
    """The DataLoader's collate_fn: `TrainingSet.__getitems__` already returns whole batches."""
    return batch


def training_sources(spec: str | Sequence[str]) -> tuple[str, ...]:
    """--train-data as given: one path, a comma separated list, or a sequence of paths."""
    paths = spec.split(",") if isinstance(spec, str) else spec
    return tuple(p.strip() for p in paths if p.strip())


def load_training_set(
    spec: str | Sequence[str],
    prep: Preprocessing,
    image_shape: tuple[int, int, int],
    *,
    classes: int | None = None,
    explicit_normalisation: bool = False,
) -> TrainingSet:
    """Index every source of `spec` for a model taking `image_shape` (C, H, W) inputs with `classes` outputs.

    ImageFolder and tar images are resized and centre-cropped to the model's
    input size (`prep.input_size` is taken from `image_shape`); an npz must
    already have it. Refuses, in one line, sources whose classes disagree or
    whose labels the model has no output for.
    """
    paths = training_sources(spec)
    if not paths:
        raise DataError(f"no training data given; --train-data takes {_KINDS}, or several separated by commas")
    sources = [_read_source(Path(p).expanduser(), prep, tuple(image_shape), explicit_normalisation) for p in paths]
    for source in sources:
        if len(source) == 0:
            raise DataError(f"training data {source.name} holds no images")
        if isinstance(source, _EncodedSource):
            source.normalise([source.pixels(0)])  # undecodable data, or the wrong channels, fail now, not in a worker
    _check_classes_agree(sources, prep.label_offset)
    training = TrainingSet(sources, image_shape)
    _check_labels_fit(training, classes)
    return training


def _check_classes_agree(sources: Sequence[_Source], label_offset: int) -> None:
    """Every ImageFolder source has the same class folders, and no npz label lies beyond them."""
    folders = [s for s in sources if s.classes is not None]
    if not folders:
        return
    first = folders[0]
    for other in folders[1:]:
        if other.classes != first.classes:
            missing = sorted(set(first.classes) ^ set(other.classes))[:3]
            raise DataError(
                f"training sources disagree on the classes: {first.name} has {len(first.classes)} class folders, "
                f"{other.name} has {len(other.classes)} (differing: {', '.join(missing) or 'their order'}); "
                "labels come from the sorted class folder names, so every ImageFolder source needs the same ones"
            )
    count = len(first.classes)
    for source in sources:
        if source.classes is None:
            lo, hi = int(source.labels.min()) - label_offset, int(source.labels.max()) - label_offset
            if lo < 0 or hi >= count:
                raise DataError(
                    f"training sources disagree on the number of classes: {source.name} has labels {lo}..{hi} but "
                    f"{first.name} has {count} class folders ({first.classes[0]} .. {first.classes[-1]} = 0..{count - 1}); "
                    "an npz's labels must number the same classes in sorted folder-name order"
                )


def _check_labels_fit(training: TrainingSet, classes: int | None) -> None:
    if classes is not None:
        check_labels_fit("training", training.labels, classes,
                         "give training data of the model's classes (or --label-offset for models with a background class)")
