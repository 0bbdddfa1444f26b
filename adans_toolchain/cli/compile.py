"""`adans-compile`: the command-line entry point.

Every failure prints one line and exits non-zero (cli/errors.py); a
traceback is shown only with --debug.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import MISSING
from pathlib import Path
from types import UnionType
from typing import get_args, get_origin, get_type_hints

from adans_toolchain.cli.errors import run_reporting_errors


EXAMPLE = """\
example (the bundled ResNet-20 on CIFAR-10; about 4 minutes on a 2-core CPU):
  adans-compile adans_toolchain/examples/resnet20.th --arch cifar_resnet20 --target host \\
      --data adans_toolchain/examples/cifar10_val_1000.npz --val-limit 500 \\
      --test-data adans_toolchain/examples/cifar10_test_500.npz \\
      --samples 20 --iterations 8 --max-accuracy-drop 5 --round-to 8 -o out/resnet20

It writes OUT/model.onnx and OUT/report.md; a killed run continues with --resume OUT.
"""


def build_parser() -> argparse.ArgumentParser:
    """One option per CompileConfig setting (pipeline/config.py), plus --list-targets and --version."""
    from adans_toolchain import __version__
    from adans_toolchain.pipeline.config import GROUPS, CompileConfig, cli_settings

    settings = cli_settings()
    required = " ".join(_display(f) for f in settings if _is_required(f))
    p = argparse.ArgumentParser(
        prog="adans-compile",
        usage=f"%(prog)s {required} [options]\n       %(prog)s --list-targets",
        description="Search per-layer compression with AdaNS and emit a smaller, validated ONNX model.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"adans {__version__}")
    p.add_argument("--list-targets", action="store_true", help="list known targets and exit")
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    exclusive = {}  # name -> mutually exclusive group
    hints = get_type_hints(CompileConfig)
    for f in settings:
        group = groups[f.metadata["group"]]
        if f.metadata["exclusive"]:
            group = exclusive.setdefault(f.metadata["exclusive"], group.add_mutually_exclusive_group())
        group.add_argument(*_flags(f), **_argparse_options(f, hints[f.name]))
    return p


def _flags(f) -> tuple[str, ...]:
    return f.metadata["flags"] or ("--" + f.name.replace("_", "-"),)


def _is_required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _display(f) -> str:
    """How a required setting is written: MODEL, --data VAL, -o OUT."""
    flag, metavar = _flags(f)[0], f.metadata["metavar"]
    if not flag.startswith("-"):
        return metavar or flag.upper()
    return f"{flag} {metavar}" if metavar else flag


def _shown(value) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _argparse_options(f, hint) -> dict:
    m = f.metadata
    text = m["help"]
    if _is_required(f):
        text += " (required)"
    elif f.default is not None and f.default is not False:
        text += f" (default: {_shown(f.default)})"
    options = {"help": text.replace("%", "%%")}
    if _flags(f)[0].startswith("-"):
        options["dest"] = f.name
    value_type = m["type"] or _value_type(hint)
    if value_type is bool:
        return {**options, "action": "store_true"}
    options["type"] = value_type
    options.update({k: m[k] for k in ("nargs", "metavar", "choices", "const") if m[k] is not None})
    if not _is_required(f):
        options["default"] = f.default
    return options


def _value_type(hint):
    """The type of one command-line word: int for `int | None`, float for `tuple[float, ...]`."""
    args = [a for a in get_args(hint) if a is not type(None)] if isinstance(hint, UnionType) else [hint]
    value_type = args[0]
    if get_origin(value_type) is tuple:
        value_type = get_args(value_type)[0]
    return value_type


def _config_from_args(args: argparse.Namespace, argv: list[str]):
    from adans_toolchain.errors import ConfigError
    from adans_toolchain.pipeline.config import CompileConfig, cli_settings

    settings = cli_settings()
    values = {f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v for f in settings}
    if isinstance(values["resume"], str):  # --resume OUT names the run directory instead of -o OUT
        values["out"] = values["resume"]
    values["resume"] = bool(values["resume"])
    missing = [_display(f) for f in settings if _is_required(f) and not values[f.name]]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}; see adans-compile --help")
    return CompileConfig(**values, command=shlex.join(["adans-compile", *argv]))


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

        cfg = _config_from_args(args, argv)
        report = compile_model(cfg, Progress())
        _print_summary(report, Path(cfg.out))
        return 0

    return run_reporting_errors("adans-compile", compile_and_summarise, debug=args.debug, on_interrupt="continue with --resume")


def _print_summary(report: dict, out: Path) -> None:
    b, c, s = report["baseline"], report["compressed"], report["speedup"]
    line = f"top-1 VAL {b['top1_val']:.2f} -> {c['top1_val']:.2f} %"
    if "top1_test" in b:
        line += f", TEST {b['top1_test']:.2f} -> {c['top1_test']:.2f} %"
    line += f"; MACs {c['macs'] / b['macs']:.1%} of baseline (theoretical {s['theoretical']:.2f}x)"
    rounds = report.get("rounds")
    if rounds:  # --rounds: the MACs each round reached, of the baseline's
        line += f" after {len(rounds)} rounds (" + " -> ".join(f"{r['macs_ratio']:.1%}" for r in rounds) + ")"
    m = s.get("measured_host")
    if m:
        line += "; measured " + ", ".join(f"{v['speedup']:.2f}x @ batch {k.removeprefix('batch_')}" for k, v in m.items() if k.startswith("batch_"))
    print(line)
    rule = report["search"].get("one_rate_rule")
    if rule:
        print(_one_rate_line(rule))
    if "int8" in report:
        print(_int8_line(report["int8"], out))
    family = report.get("family")
    if family:  # --budgets: a line per member (OUT's own files are the largest budget's)
        for m in family["members"]:
            print(_member_line(m, out / family["folder"]))
        print(f"family: {out / family['folder'] / 'family.md'}")
    print(f"model: {out / 'model.onnx'}\nreport: {out / 'report.md'}")


def _member_line(m: dict, folder: Path) -> str:
    """--budgets: one member of the family."""
    t = m["top1"]
    line = f"budget {m['budget']:.2f}: {m['cost_ratio']:.1%} of the cost, {m['macs_ratio']:.1%} MACs, VAL {t['val']:.2f} %"
    if t.get("test") is not None:
        line += f", TEST {t['test']:.2f} %"
    measured = [(k.removeprefix("batch_"), v) for k, v in (m.get("measured") or {}).items() if k.startswith("batch_")]
    if measured:
        line += "; measured " + ", ".join(f"{v['speedup']:.2f}x @ batch {b}" for b, v in measured)
    return line + f": {folder / m['folder'] / 'model.onnx'}"


def _int8_line(q: dict, out: Path) -> str:
    """--quantize int8: the int8 model beside the float one."""
    split = "test" if "test" in q["top1"] else "val"
    t = q["top1"][split]
    line = (f"int8: {out / 'model_int8.onnx'}, file {q['file_ratio']:.1%} of model.onnx, top-1 {split.upper()} "
            f"{t['float']:.2f} -> {t['int8']:.2f} %")
    m = q.get("measured")
    if m:
        line += "; measured " + ", ".join(f"{v['int8_speedup']:.2f}x @ batch {k.removeprefix('batch_')}"
                                          for k, v in m.items() if k.startswith("batch_")) + " over the baseline"
    return line


def _one_rate_line(rule: dict) -> str:
    """The one-rate rule beside the searched result: what the search had to beat."""

    def side(facts: dict) -> str:
        test = "" if facts["top1_test"] is None else f", TEST {facts['top1_test']:.2f} %"
        return f"{facts['macs_ratio']:.1%} MACs, VAL {facts['top1_val']:.2f} %{test}"

    line = f"one-rate rule (r = {rule['rate']:.3g}): {side(rule)}; searched: {side(rule['searched'])}"
    at_cost = rule.get("at_searched_cost")
    if at_cost:  # the rule pushed to the searched plan's cost: the comparison at equal cost
        line += f"; rule at the searched cost (r = {at_cost['rate']:.3g}): {side(at_cost)}"
    return line


if __name__ == "__main__":
    sys.exit(main())
