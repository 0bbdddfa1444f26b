"""Fine-tuning loop: SGD with a cosine schedule, crop/flip augmentation, optional distillation.

Training images come from a `TrainingSet` (frontend.training_data: npz,
ImageFolder, tars, mixed), decoded by DataLoader worker processes while this
process trains. Every random choice (order, crops, flips) is drawn here from
(seed, epoch) for every image index (`EpochBatches`), never in a worker, and
a checkpoint is written after each epoch, so a killed fine-tune resumes from
its last finished epoch and ends where an uninterrupted one would, whatever
the number of workers.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from targets.host import usable_cores

from adans_toolchain.errors import DataError, SearchStateError
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.frontend.training_data import SampleRequest, TrainingSet, batch_as_fetched
from adans_toolchain.fileio import atomic_write_bytes


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    distill: bool = False
    temperature: float = 4.0
    distill_weight: float = 0.9  # share of the distillation term when distilling
    augment: bool = True
    seed: int = 0


@dataclass
class FinetuneLog:
    epochs_done: int = 0
    train_loss: list[float] = field(default_factory=list)
    train_top1: list[float] = field(default_factory=list)
    resumed_from_epoch: int = 0
    # Wall seconds of each epoch's training steps (data loading included), for the report's images/s; empty in
    # checkpoints written before it was recorded.
    epoch_seconds: list[float] = field(default_factory=list)

    def images_per_s(self, images: int) -> float | None:
        """Training throughput over the epochs this log timed, or None if it timed none."""
        return images * len(self.epoch_seconds) / sum(self.epoch_seconds) if self.epoch_seconds else None


class EpochBatches(torch.utils.data.Sampler):
    """An epoch's batches of SampleRequests: order, shifts and flips drawn from (seed, epoch) alone.

    Drawn here, in the training process, and carried by each request to the
    worker that decodes the image, so the batches are the same whatever the
    number of workers; image i's shift and flip are entry i of the epoch's
    draws, a function of (seed, epoch, i). Set `epoch` before iterating.
    Augmentation is the standard CIFAR one scaled to the image: a shift of up
    to size/8 pixels each way (4 for 32x32: pad 4, random crop), zero-filled,
    and a horizontal flip with probability 1/2.
    """

    def __init__(self, images: int, batch_size: int, seed: int, image_size: tuple[int, int], augment: bool) -> None:
        self.images, self.batch_size, self.seed, self.augment = images, batch_size, seed, augment
        self.max_shift = tuple(max(1, side // 8) for side in image_size)
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.images / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.images, generator=generator).tolist()
        if self.augment:
            (sy, sx), n = self.max_shift, self.images
            dy = (torch.randint(0, 2 * sy + 1, (n,), generator=generator) - sy).tolist()
            dx = (torch.randint(0, 2 * sx + 1, (n,), generator=generator) - sx).tolist()
            flip = (torch.rand(n, generator=generator) < 0.5).tolist()
            requests = [SampleRequest(i, dy[i], dx[i], flip[i]) for i in order]
        else:
            requests = [SampleRequest(i) for i in order]
        for start in range(0, self.images, self.batch_size):
            yield requests[start : start + self.batch_size]


def loader_workers(data: TrainingSet, device: str) -> int:
    """Decoding processes: none for images already in memory. On a CPU one, which decodes while the
    training threads compute: decoding a 32x32 JPEG takes ~0.2 ms of one core, training ResNet-56 on it
    ~14 ms (2-core CPU, 2026-12), so more would only take cores from training. On a GPU, which trains
    faster than one core decodes, up to 8."""
    if not data.decodes_images:
        return 0
    if torch.device(device).type == "cpu":
        return 1
    return max(1, min(8, usable_cores() - 1))


def _loader(data: TrainingSet, batches: EpochBatches, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        data, batch_sampler=batches, num_workers=workers, persistent_workers=workers > 0, collate_fn=batch_as_fetched,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
    )


def batch_with_teacher(batch, device: torch.device, layout: torch.memory_format, teacher, cfg
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A loader batch on `device` (images in `layout`) and, with --distill, the teacher's logits for it."""
    if isinstance(batch, str):  # an image a worker could not decode (TrainingSet.__getitems__)
        raise DataError(batch)
    x = batch[0].to(device, non_blocking=True).contiguous(memory_format=layout)
    y = batch[1].to(device, non_blocking=True)
    teacher_logits = None
    if teacher is not None and cfg.distill:
        with torch.no_grad():
            teacher_logits = teacher(x).float()
    return x, y, teacher_logits


def _loss(logits, labels, teacher_logits, cfg: FinetuneConfig):
    ce = F.cross_entropy(logits, labels)
    if teacher_logits is None:
        return ce
    t = cfg.temperature
    kd = F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(teacher_logits / t, dim=1), reduction="batchmean") * t * t
    return cfg.distill_weight * kd + (1.0 - cfg.distill_weight) * ce


def finetune(
    model: nn.Module,
    data: ImageSet | TrainingSet,
    cfg: FinetuneConfig,
    *,
    teacher: nn.Module | None = None,
    checkpoint: Path | None = None,
    device: str = "cpu",
    workers: int | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> FinetuneLog:
    """Train `model` on `data` for cfg.epochs, resuming from `checkpoint` if it holds finished epochs.

    workers: decoding processes (default `loader_workers`); the result does not depend on it.
    """
    if isinstance(data, ImageSet):
        data = TrainingSet.from_images(data)
    device_t = torch.device(device)
    layout = _training_layout(device_t)
    model.to(device_t, memory_format=layout)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True,
    )
    batches = EpochBatches(len(data), cfg.batch_size, cfg.seed, data.image_shape[1:], cfg.augment)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs * len(batches), 1))
    log = FinetuneLog()
    if checkpoint is not None and checkpoint.is_file():
        log = _resume(checkpoint, model, optimizer, scheduler, cfg, data, device_t)
    if teacher is not None:
        teacher.to(device_t).eval()
    workers = loader_workers(data, device) if workers is None else workers
    loader = _loader(data, batches, workers, device_t)
    for epoch in range(log.epochs_done, cfg.epochs):
        batches.epoch = epoch  # before iter(loader): workers prefetch as soon as it starts
        model.train()
        total, correct, seen = 0.0, 0, 0
        started = time.perf_counter()
        for step, batch in enumerate(loader):
            x, y, teacher_logits = batch_with_teacher(batch, device_t, layout, teacher, cfg)
            logits = model(x).float()
            loss = _loss(logits, y, teacher_logits, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if on_batch is not None:
                on_batch(step + 1, len(batches))
        model.eval()
        log.epoch_seconds.append(time.perf_counter() - started)
        log.epochs_done = epoch + 1
        log.train_loss.append(total / seen)
        log.train_top1.append(100.0 * correct / seen)
        if checkpoint is not None:
            _save(checkpoint, model, optimizer, scheduler, cfg, data, log)
        if on_epoch is not None:
            on_epoch(epoch + 1, log.train_loss[-1], log.train_top1[-1])
    model.to(memory_format=torch.contiguous_format).eval()  # whoever reads the weights next expects NCHW
    return log


def _training_layout(device: torch.device) -> torch.memory_format:
    """Channels-last on a CPU: ResNet-56 trained ~20 % faster (82 vs 68 images per CPU-second, 1 thread,
    interpreted ONNX and PyTorch module alike, 2-core CPU, 2026-12). Not measured on a GPU: left as it is there."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _resume(checkpoint: Path, model, optimizer, scheduler, cfg: FinetuneConfig, data: TrainingSet, device) -> FinetuneLog:
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    # Checkpoints written before the training data was recorded hold only the image count.
    if state.get("config") != asdict(cfg) or state.get("images") != len(data) or state.get("data", data.identity()) != data.identity():
        raise SearchStateError(
            f"{checkpoint} belongs to a fine-tune with other settings or training data; delete it or give the same ones"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log = FinetuneLog(**state["log"])
    log.resumed_from_epoch = log.epochs_done
    return log


def _save(checkpoint: Path, model, optimizer, scheduler, cfg: FinetuneConfig, data: TrainingSet, log: FinetuneLog) -> None:
    buffer = io.BytesIO()
    torch.save(
        {"config": asdict(cfg), "images": len(data), "data": data.identity(), "model": model.state_dict(),
         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "log": {k: v for k, v in asdict(log).items() if k != "resumed_from_epoch"}},
        buffer,
    )
    atomic_write_bytes(checkpoint, buffer.getvalue())
