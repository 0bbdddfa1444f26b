"""`adans-profile`: build a latency lookup table on the device itself.

    adans-profile --target host --builtin cifar_resnet20 --builtin mobilenet_v2 -o host.json
    adans-profile --target cortex-a57 --model resnet56.th --arch cifar_resnet56 --input-size 32 32 -o a57.json
    adans-profile --target host --builtin cifar_resnet56 --precisions float,int8 -o host.json   # int8-aware

See README.md beside this file for profiling on a Jetson and bringing the
table back.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from adans_toolchain.cli.errors import run_reporting_errors
from adans_toolchain.errors import ConfigError, InputError, OutputError

# Built-in models to profile without a checkpoint (weights do not change
# latency): name -> (architecture for --arch, default input size).
BUILTINS = {
    "cifar_resnet20": ("cifar_resnet20", (32, 32)),
    "cifar_resnet32": ("cifar_resnet32", (32, 32)),
    "cifar_resnet44": ("cifar_resnet44", (32, 32)),
    "cifar_resnet56": ("cifar_resnet56", (32, 32)),
    "cifar_resnet110": ("cifar_resnet110", (32, 32)),
    "mobilenet_v2": ("torchvision:mobilenet_v2", (224, 224)),
    "resnet18": ("torchvision:resnet18", (224, 224)),
}


def build_parser() -> argparse.ArgumentParser:
    from adans_toolchain import __version__
    from adans_toolchain.profiling.timing import TimingConfig

    t = TimingConfig()
    p = argparse.ArgumentParser(
        prog="adans-profile",
        description="Time single-kernel ONNX graphs in ONNX Runtime on this device, over the channel counts the "
        "given models can reach under pruning, and write a latency lookup table for `adans-compile --cost latency`.",
    )
    p.add_argument("--version", action="version", version=f"adans {__version__}")
    p.add_argument("--target", default="host", help="target the table is for (default: host); see adans-compile --list-targets")
    p.add_argument("--model", action="append", default=[], metavar="PATH",
                   help="a model file to profile (as adans-compile takes it); repeatable, each with its own --arch")
    p.add_argument("--arch", action="append", default=[], metavar="ARCH", help="architecture of the --model at the same position")
    p.add_argument("--builtin", action="append", default=[], choices=sorted(BUILTINS),
                   help="a built-in architecture, untrained (latency does not depend on the weights); repeatable")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                   help="input height and width (default: 32 32 for CIFAR models, 224 224 otherwise)")
    p.add_argument("--batch", type=int, action="append", metavar="N",
                   help="batch size to profile; repeatable (default: 1 and the target's batch size)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: the target's)")
    p.add_argument("--precisions", default="float", type=_precisions, metavar="LIST",
                   help="comma separated: float (always measured) and int8, the fused QDQ integer kernels ONNX Runtime "
                   "runs for an int8 layer, which a latency search with --methods ...,int8 needs (default: float, "
                   "because int8 adds almost as many grid points again, nearly every kernel being a weighted one, and "
                   "an int8 point takes longer to set up: about 2-3x the float-only time; given for an existing table, "
                   "it resumes it and adds only the int8 kernels)")
    p.add_argument("-o", "--out", help="table to write (default: the target's table location)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of adding to an existing table")
    p.add_argument("--calibration", choices=("check", "apply", "off"), default="check",
                   help="time each whole baseline against the table's prediction and store the comparison (check, "
                   "default), also scale that model's predictions by measured/predicted (apply), or skip (off)")
    p.add_argument("--align", type=int, help="channel multiple measured densely (default: probed from the runtime)")
    p.add_argument("--dense-limit", type=int,
                   help="every multiple of --align up to this is measured (default: 8 x align)")
    p.add_argument("--rounds", type=int, default=t.rounds, help=f"interleaved timing rounds (default {t.rounds})")
    p.add_argument("--max-runs", type=int, default=t.max_runs,
                   help=f"timed runs per pack of kernels, at most (default {t.max_runs}; fewer when a pack is slow)")
    p.add_argument("--ms-per-pack", type=float, default=t.ms_per_pack,
                   help=f"time spent running each pack of up to {t.pack} kernels (default {t.ms_per_pack:g} ms)")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading a whole pickled module (runs code from the file)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _precisions(text: str) -> tuple[str, ...]:
    """'float,int8' -> ('fp32', 'int8'): the table's names for them."""
    from adans_toolchain.profiling.profiler import PRECISIONS

    names = {"float": PRECISIONS[0], "fp32": PRECISIONS[0], "int8": PRECISIONS[1]}
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in names]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"unknown precision {unknown[0] if unknown else 'none'!r}; give float or float,int8")
    return tuple(dict.fromkeys([PRECISIONS[0], *(names[t] for t in items)]))  # float always


def _models(args, progress):
    import torch

    from adans_toolchain.analysis.channels import analyse_channels
    from adans_toolchain.analysis.graph import Graph
    from adans_toolchain.frontend.export import export_onnx
    from adans_toolchain.frontend.loading import build_architecture, load_model
    from adans_toolchain.profiling.profiler import ModelToProfile

    if len(args.arch) not in (0, len(args.model)) and not (len(args.model) == 1 and len(args.arch) == 1):
        raise ConfigError("give one --arch per --model (or none, for TorchScript files)")
    entries = []
    for i, path in enumerate(args.model):
        arch = args.arch[i] if i < len(args.arch) else None
        loaded = load_model(path, arch, args.trust_pickle)
        default = (32, 32) if (arch or "").startswith("cifar") else (224, 224)
        entries.append((Path(path).stem, loaded.module, default))
    for name in args.builtin:
        arch, default = BUILTINS[name]
        entries.append((name, build_architecture(arch), default))
    if not entries:
        raise ConfigError("nothing to profile: give --model PATH (with --arch) or --builtin NAME")
    models = []
    torch.set_num_threads(max(1, args.threads or 1))
    for name, module, default in entries:
        size = tuple(args.input_size) if args.input_size else default
        shape = (3, *size)
        progress(f"exporting and analysing {name} at {list(shape)}")
        onnx_model = export_onnx(module.eval(), shape)
        models.append(ModelToProfile(name, onnx_model, analyse_channels(Graph.from_model(onnx_model, shape)), shape))
    return models


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_reporting_errors(
        "adans-profile", lambda: _profile(args), debug=args.debug,
        on_interrupt="the table holds every family finished so far (run again to resume)",
    )


def _profile(args) -> int:
    from cost_models import LookupTableError
    from targets import UnknownTargetError, load_target

    from adans_toolchain.profiling.grid import GridRule
    from adans_toolchain.profiling.profiler import profile
    from adans_toolchain.profiling.timing import TimingConfig

    try:
        target = load_target(args.target)
    except UnknownTargetError as e:
        raise ConfigError(str(e)) from e
    batches = tuple(sorted(set(args.batch or [1, target.batch_size])))
    if min(batches) < 1 or (args.threads is not None and args.threads < 1):
        raise ConfigError("--batch and --threads must be >= 1")
    if target.provider != "CPUExecutionProvider":
        import onnxruntime as ort

        if target.provider not in ort.get_available_providers():
            raise ConfigError(
                f"target {target.id} runs on {target.provider}, which this ONNX Runtime does not have "
                f"({', '.join(ort.get_available_providers())}); profile on the device, with its ONNX Runtime build"
            )
    out = Path(args.out).expanduser() if args.out else target.lut_location()
    _check_table_path(out)
    start = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    models = _models(args, progress)
    rule = GridRule(align=args.align, dense_limit=args.dense_limit)
    timing = TimingConfig(rounds=args.rounds, max_runs=args.max_runs, ms_per_pack=args.ms_per_pack)
    try:
        table = profile(models, target, out, batches=batches, threads=args.threads, rule=rule, timing=timing,
                        resume=not args.no_resume, calibration=args.calibration, progress=progress,
                        precisions=args.precisions)
    except LookupTableError as e:
        raise InputError(str(e)) from e
    skipped = table.header.get("skipped", [])
    progress(f"wrote {out}: {len(table.families)} families"
             + (f"; {len(skipped)} not profiled (see header.skipped)" if skipped else ""))
    return 0


def _check_table_path(out: Path) -> None:
    """Before hours of timing: the table can be written where -o says (the profiler writes it as families finish)."""
    from adans_toolchain.fileio import unwritable_reason

    if out.is_dir():
        raise ConfigError(f"-o {out} is a directory; give the table's file name (e.g. -o {out / 'table.json'})")
    folder = next((f for f in out.parents if f.exists()), Path("."))
    if not folder.is_dir():
        raise ConfigError(f"-o {out}: {folder} is not a directory; give a table path in a folder")
    reason = unwritable_reason(folder)
    if reason is not None:
        raise OutputError(f"cannot write the table {out} ({reason} in {folder}); choose an -o you can write to")


if __name__ == "__main__":
    raise SystemExit(main())
