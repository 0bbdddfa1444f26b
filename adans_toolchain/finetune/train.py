"""Fine-tuning loop: SGD with a cosine schedule, crop/flip augmentation, optional distillation.

Every random choice (shuffling, crops, flips) comes from a generator seeded
by (seed, epoch), and a checkpoint is written after each epoch, so a killed
fine-tune resumes from its last finished epoch and ends where an
uninterrupted one would.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from adans_toolchain.errors import SearchStateError
from adans_toolchain.frontend.data import ImageSet
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


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop from a zero-padded image (pad = size/8) and random horizontal flip.

    Images are already normalised, so zero padding is the mean pixel.
    """
    n, _, h, w = batch.shape
    pad_h, pad_w = max(1, h // 8), max(1, w // 8)
    padded = F.pad(batch, (pad_w, pad_w, pad_h, pad_h))
    top = torch.randint(0, 2 * pad_h + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad_w + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(batch)
    for i in range(n):
        crop = padded[i, :, top[i] : top[i] + h, left[i] : left[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def _loss(logits, labels, teacher_logits, cfg: FinetuneConfig):
    ce = F.cross_entropy(logits, labels)
    if teacher_logits is None:
        return ce
    t = cfg.temperature
    kd = F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(teacher_logits / t, dim=1), reduction="batchmean") * t * t
    return cfg.distill_weight * kd + (1.0 - cfg.distill_weight) * ce


def finetune(
    model: nn.Module,
    data: ImageSet,
    cfg: FinetuneConfig,
    *,
    teacher: nn.Module | None = None,
    checkpoint: Path | None = None,
    device: str = "cpu",
    on_epoch: Callable[[int, float, float], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> FinetuneLog:
    device_t = torch.device(device)
    model.to(device_t)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True,
    )
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs * steps_per_epoch, 1))
    log = FinetuneLog()
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device_t, weights_only=False)
        if state.get("config") != asdict(cfg) or state.get("images") != len(data):
            raise SearchStateError(
                f"{checkpoint} belongs to a fine-tune with other settings; delete it or give the same settings"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        log = FinetuneLog(**state["log"])
        log.resumed_from_epoch = log.epochs_done
    if teacher is not None:
        teacher.to(device_t).eval()
    x_all, y_all = data.x, data.y
    for epoch in range(log.epochs_done, cfg.epochs):
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(data), generator=generator)
        model.train()
        total, correct, seen = 0.0, 0, 0
        for step, start in enumerate(range(0, len(data), cfg.batch_size)):
            index = order[start : start + cfg.batch_size]
            x = x_all[index]
            if cfg.augment:
                x = augment(x, generator)
            x, y = x.to(device_t), y_all[index].to(device_t)
            teacher_logits = None
            if teacher is not None and cfg.distill:
                with torch.no_grad():
                    teacher_logits = teacher(x).float()
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
                on_batch(step + 1, steps_per_epoch)
        model.eval()
        log.epochs_done = epoch + 1
        log.train_loss.append(total / seen)
        log.train_top1.append(100.0 * correct / seen)
        if checkpoint is not None:
            buffer = io.BytesIO()
            torch.save(
                {"config": asdict(cfg), "images": len(data), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "log": {k: v for k, v in asdict(log).items() if k != "resumed_from_epoch"}},
                buffer,
            )
            atomic_write_bytes(checkpoint, buffer.getvalue())
        if on_epoch is not None:
            on_epoch(epoch + 1, log.train_loss[-1], log.train_top1[-1])
    model.eval()
    return log
