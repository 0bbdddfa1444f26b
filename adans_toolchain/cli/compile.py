"""`adans-compile`: the command-line entry point.

User errors (AdansError) print one line and exit non-zero; a traceback is
shown only with --debug. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from adans_toolchain.cli.errors import run_reporting_errors


def build_parser() -> argparse.ArgumentParser:
    from cost_models import cost_model_names

    from adans_toolchain.search import SAMPLER_NAMES

    p = argparse.ArgumentParser(
        prog="adans-compile",
        description="Search per-layer compression with AdaNS and emit a smaller, validated ONNX model.",
    )
    p.add_argument("model", nargs="?", help="state_dict/checkpoint (with --arch), TorchScript archive, or pickled module (--trust-pickle)")
    p.add_argument("--target", default="host", help="device to compile for (see --list-targets); default: host")
    p.add_argument("--list-targets", action="store_true", help="list known targets and exit")
    p.add_argument("--data", help="validation set scored during the search: .npz (x, y) or ImageFolder directory")
    p.add_argument("--test-data", help="held-out test set, only for the report")
    p.add_argument("--val-limit", type=int, help="use only the first N validation images")
    p.add_argument("--arch", help="architecture of a state_dict: cifar_resnet20/32/44/56, torchvision:NAME, or package.module:callable")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading a whole pickled module (runs code from the file)")
    p.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean of [0,1] pixels (default ImageNet's)")
    p.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std of [0,1] pixels (default ImageNet's)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="model input size (ImageFolder images are resized and centre-cropped)")
    p.add_argument("--label-offset", type=int, default=0, help="added to every label (1 for 1001-class TF models)")
    p.add_argument("--methods", default="ps",
                   help="comma separated: ps (channel pruning), pn (unstructured magnitude pruning), svd (Gemm/1x1 conv), "
                        "tucker (kxk conv), d = svd,tucker; e.g. d,ps decomposes then prunes (default ps)")
    p.add_argument("--sampler", default="gaussian", choices=SAMPLER_NAMES)
    p.add_argument("--cost", default="macs", choices=cost_model_names(),
                   help="what the search minimises: macs (exact), latency (lookup table profiled on the target, "
                        "else a roofline estimate), memory (weight + peak activation bytes); default macs")
    p.add_argument("--lut", metavar="LUT", help="latency lookup table from adans-profile (default: the target's own table)")
    thr = p.add_mutually_exclusive_group()
    thr.add_argument("--accuracy-threshold", type=float, metavar="PCT", help="minimum top-1 on VAL, in percent")
    thr.add_argument("--max-accuracy-drop", type=float, metavar="POINTS", help="maximum top-1 drop on VAL, in points (default 2)")
    p.add_argument("--accuracy-floor", type=float, metavar="POINTS", help="floor of the accuracy drop in the score (default: the allowed drop)")
    p.add_argument("--priority", default="taylor", choices=("taylor", "l1"), help="channel priority (default: first-order Taylor)")
    p.add_argument("--round-to", type=int, metavar="N", help="keep a multiple of N channels in every group (e.g. 8 or 16)")
    p.add_argument("--bn-recalibrate", type=int, default=500, metavar="N",
                   help="re-estimate BatchNorm statistics of every candidate on N images (default 500; 0 = off)")
    p.add_argument("--calibration-data", help="images for --bn-recalibrate (default: the VAL images)")
    ft = p.add_argument_group("fine-tuning the emitted model")
    ft.add_argument("--train-data", help="training images (.npz or ImageFolder) for fine-tuning")
    ft.add_argument("--finetune-epochs", type=int, default=0, metavar="E", help="epochs of fine-tuning (default 0: none)")
    ft.add_argument("--finetune-lr", type=float, default=0.01, help="initial SGD learning rate (cosine schedule; default 0.01)")
    ft.add_argument("--finetune-batch-size", type=int, default=128)
    ft.add_argument("--distill", action="store_true", help="add knowledge distillation from the original model's logits")
    ft.add_argument("--finetune-baseline", action="store_true",
                    help="also fine-tune the baseline for E epochs on TRAIN, for a fair comparison when TRAIN is new data")
    p.add_argument("--samples", type=int, default=50, help="samples per iteration, b (default 50)")
    p.add_argument("--iterations", type=int, default=20, help="iterations, T, including the initial batch (default 20)")
    p.add_argument("--boundary-rounds", type=int, default=6, help="bisection rounds per site for the boundary (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where candidates are evaluated: cpu or cuda")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="candidate evaluation precision (auto: bf16 + channels-last on CUDA when it keeps the baseline's top-1 within 0.1 point)")
    p.add_argument("--executor", default="local", choices=("local", "multi-gpu", "ray"),
                   help="where candidates are evaluated: in process, one worker per GPU, or Ray actors")
    p.add_argument("--workers", type=int, help="worker count for --executor multi-gpu/ray (default: GPUs / CPUs)")
    p.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch and ONNX Runtime (default: the target's)")
    p.add_argument("--batch-size", type=int, default=250, help="evaluation batch size")
    p.add_argument("--measure-batches", type=int, nargs="+", default=[1, 32], help="batch sizes to measure speed at")
    p.add_argument("--measure-budget", type=float, default=8.0, dest="measure_budget_s", help="seconds of timing per batch size")
    p.add_argument("--no-measure", action="store_true", help="skip the speed measurement")
    p.add_argument("-o", "--out", help="output directory")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="OUT", help="continue the run in OUT (or -o)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in OUT")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _config_from_args(args: argparse.Namespace, argv: list[str]):
    from adans_toolchain.pipeline.config import CompileConfig
    from adans_toolchain.errors import ConfigError

    out = args.resume if isinstance(args.resume, str) else args.out
    missing = [flag for flag, value in (("MODEL", args.model), ("--data", args.data), ("-o OUT", out)) if not value]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}; see adans-compile --help")
    return CompileConfig(
        model=args.model,
        data=args.data,
        out=out,
        target=args.target,
        arch=args.arch,
        trust_pickle=args.trust_pickle,
        test_data=args.test_data,
        val_limit=args.val_limit,
        mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None,
        input_size=tuple(args.input_size) if args.input_size else None,
        label_offset=args.label_offset,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        sampler=args.sampler,
        cost=args.cost,
        lut=args.lut,
        accuracy_threshold=args.accuracy_threshold,
        max_accuracy_drop=args.max_accuracy_drop,
        accuracy_floor=args.accuracy_floor,
        priority=args.priority,
        round_to=args.round_to,
        bn_recalibrate=args.bn_recalibrate,
        calibration_data=args.calibration_data,
        train_data=args.train_data,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        finetune_batch_size=args.finetune_batch_size,
        distill=args.distill,
        finetune_baseline=args.finetune_baseline,
        samples=args.samples,
        iterations=args.iterations,
        boundary_rounds=args.boundary_rounds,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        executor=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
        threads=args.threads,
        batch_size=args.batch_size,
        measure_batches=tuple(args.measure_batches),
        measure_budget_s=args.measure_budget_s,
        no_measure=args.no_measure,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        debug=args.debug,
        command=shlex.join(["adans-compile", *argv]),
    )


def _list_targets() -> int:
    from targets import known_target_ids, load_target

    for tid in known_target_ids():
        t = load_target(tid)
        lut = t.lut_location()
        table = f"latency table {lut}" if lut.is_file() else f"no latency table yet (would be {lut}): roofline estimate"
        print(f"{t.id:14s} {t.kind:4s} {t.description}")
        print(f"{'':19s} {t.provider}, {t.threads or '?'} threads, batch {t.batch_size}; {table}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    def compile_and_summarise() -> int:
        if args.list_targets:
            return _list_targets()
        from adans_toolchain.pipeline.compile import compile_model
        from adans_toolchain.pipeline.progress import Progress

        report = compile_model(_config_from_args(args, argv), Progress())
        _print_summary(report, Path(args.resume if isinstance(args.resume, str) else args.out))
        return 0

    return run_reporting_errors("adans-compile", compile_and_summarise, debug=args.debug, on_interrupt="continue with --resume")


def _print_summary(report: dict, out: Path) -> None:
    b, c, s = report["baseline"], report["compressed"], report["speedup"]
    line = f"top-1 VAL {b['top1_val']:.2f} -> {c['top1_val']:.2f} %"
    if "top1_test" in b:
        line += f", TEST {b['top1_test']:.2f} -> {c['top1_test']:.2f} %"
    line += f"; MACs {c['macs'] / b['macs']:.1%} of baseline (theoretical {s['theoretical']:.2f}x)"
    m = s.get("measured_host")
    if m:
        line += "; measured " + ", ".join(f"{v['speedup']:.2f}x @ batch {k.removeprefix('batch_')}" for k, v in m.items() if k.startswith("batch_"))
    print(line)
    print(f"model: {out / 'model.onnx'}\nreport: {out / 'report.md'}")


if __name__ == "__main__":
    sys.exit(main())
