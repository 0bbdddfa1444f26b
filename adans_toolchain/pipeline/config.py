"""Settings of one compile, as typed, frozen data (the CLI builds it; tests can too)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class CompileConfig:
    model: str
    data: str
    out: str
    target: str = "host"
    arch: str | None = None
    trust_pickle: bool = False
    test_data: str | None = None
    val_limit: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, int] | None = None
    label_offset: int = 0
    methods: tuple[str, ...] = ("ps",)
    sampler: str = "gaussian"
    cost: str = "macs"
    lut: str | None = None  # latency lookup table (default: the target's own, else a roofline estimate)
    accuracy_threshold: float | None = None
    max_accuracy_drop: float | None = None
    accuracy_floor: float | None = None  # None: the allowed drop (see scoring.py)
    priority: str = "taylor"
    round_to: int | None = None  # keep channel counts at multiples of N
    bn_recalibrate: int = 500  # images re-estimating BatchNorm per candidate; 0 = off
    calibration_data: str | None = None  # default: the VAL images
    train_data: str | None = None  # images for fine-tuning the emitted model
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    finetune_batch_size: int = 128
    distill: bool = False
    finetune_baseline: bool = False
    samples: int = 50
    iterations: int = 20
    boundary_rounds: int = 6
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"  # candidate evaluation: fp32, bf16, or auto (bf16 on CUDA when it keeps top-1)
    executor: str = "local"  # local, multi-gpu or ray
    workers: int | None = None
    ray_address: str | None = None
    threads: int | None = None
    batch_size: int = 250
    measure_batches: tuple[int, ...] = (1, 32)
    measure_budget_s: float = 8.0
    no_measure: bool = False
    resume: bool = False
    overwrite: bool = False
    debug: bool = False
    command: str = field(default="", compare=False)

    def resume_key(self) -> dict:
        """The settings recorded in OUT/config.json and compared on --resume."""
        d = asdict(self)
        if self.cost != "latency":
            # The table then only feeds the report's predicted latency, not the search:
            # a finished MACs search can be resumed with a table to re-report it.
            d.pop("lut")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
