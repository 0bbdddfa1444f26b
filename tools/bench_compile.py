"""End-to-end compile benchmarks: run `adans-compile` on real models and data, record the figures.

Suites (each job is one real compile; a killed job resumes where it stopped):

  spine          ResNet-56 (CIFAR-10) and MobileNetV2 (ImageNet) structured pruning,
                 --max-accuracy-drop 2, no fine-tuning                  (issue 2)
  decomposition  ResNet-56 with ps / d / d,ps at the same constraint, and
                 MobileNetV2 with svd on its 1x1 convolutions            (issue 4)
  executors      evaluations per second: ResNet-20 on this CPU, local and Ray
                 with 1, 2 and 4 workers; the paper's b=100, T=50 search  (issue 7)
  finetune       ResNet-56: search at a low threshold, then fine-tune     (issue 8)
  search         ResNet-56: one-rate rule and the default search (adans) against the paper's
                 AdaNS-Gaussian, TPE and CMA-ES,
                 250 paid evaluations each, both threads                  (issue 13)
  samplers       ResNet-56: every sampler (gaussian, adans, tpe, cmaes) with three seeds on the
                 search suite's objective and budget, to choose the default (issue 13)
  int8           ResNet-56 and MobileNetV2: ps (and post-training int8 of its model) against
                 ps,int8, priced by memory; ResNet-56 priced by latency from an int8-aware
                 host table (profiled first, about 10-30 minutes)          (issue 15)
  budgets        ResNet-56: --budgets 0.8 0.6 0.4 (one search, joint fine-tuning) against three
                 single-budget compiles with the same evaluations in all  (issue 17)
  recovery       ResNet-56: the whole pipeline at scale, searched toward a small budget and
                 fine-tuned on 50,000 JPEG + 3,000 pixel-exact training images with
                 distillation, the baseline fine-tuned the same way        (issue 14)

    python tools/bench_compile.py --suite spine            # run (or resume) the jobs
    python tools/bench_compile.py --suite spine --write-md # render BENCHMARKS.md section

    python tools/bench_compile.py --suite samplers --device cuda --parallel 4   # on a GPU machine

Data: ../shared/data (CIFAR-10 lossless images and ResNet weights; ImageNet
val_1300 converted by tools/prepare_imagenet.py into runs/data/), or the folder
ADANS_BENCH_DATA names (the same layout; `cifar10/train_jpeg.tar` may be gzipped,
`train_jpeg.tar.gz`, to travel to a GPU machine). `--device cuda` evaluates and
fine-tunes on the GPU, skips the host speed measurement (that machine is not the
target), and keeps its runs apart (runs/bench_compile/<suite>-cuda/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADANS_BENCH_DATA", ROOT.parent / "shared" / "data")).resolve()
RUNS = ROOT / "runs" / "bench_compile"
DERIVED = ROOT / "runs" / "data"
CIFAR_VAL = ["--data", f"{SHARED}/cifar10/train_lossless_4000.npz", "--val-limit", "1000",
             "--test-data", f"{SHARED}/cifar10/test_lossless_1017.npz"]
RESNET56 = [f"{SHARED}/cifar10_resnets/resnet56.th", "--arch", "cifar_resnet56", *CIFAR_VAL]
RESNET20 = [f"{SHARED}/cifar10_resnets/resnet20.th", "--arch", "cifar_resnet20", *CIFAR_VAL]
IMAGENET = ["--data", str(ROOT / "runs/data/imagenet224_val.npz"), "--test-data", str(ROOT / "runs/data/imagenet224_test.npz")]
MOBILENET_V2 = [f"{SHARED}/imagenet/mobilenet_v2.pth", "--arch", "torchvision:mobilenet_v2", *IMAGENET]

# Budgets are sized for a shared 2-core CPU (each job runs on one thread so
# two jobs can share the machine); on a GPU raise --samples/--iterations to
# the paper's b = 100, T = 50.
ONE_THREAD = ["--threads", "1"]
RESNET56_SEARCH = ["--samples", "16", "--iterations", "6", "--boundary-rounds", "3", "--bn-recalibrate", "256", *ONE_THREAD]
MOBILENET_SEARCH = ["--samples", "10", "--iterations", "4", "--boundary-rounds", "2", "--bn-recalibrate", "128",
                    "--batch-size", "100", *ONE_THREAD]
RESNET20_SEARCH = ["--samples", "16", "--iterations", "6", "--boundary-rounds", "3", "--bn-recalibrate", "256", *ONE_THREAD]
LUT = str(ROOT / "runs/lut/host-1thread.json")  # profiled by tools/bench_latency.py at 1 thread
# Float and int8 kernels of ResNet-56 on this host at 2 threads, batch 1 (the target's measured batch); profiled
# before the first job that reads it (PREREQUISITES).
INT8_LUT = str(ROOT / "runs/lut/host-int8-2threads.json")
# The spine's ResNet-56 search; the jobs seeded from it (SEED_FROM) must run the same
# command, or resuming the copied run would be refused.
RESNET56_PS = [*RESNET56, "--methods", "ps", "--max-accuracy-drop", "2", *RESNET56_SEARCH]

SUITES: dict[str, dict[str, list[str]]] = {
    "spine": {
        "resnet56-ps": RESNET56_PS,
        "mobilenet_v2-ps": [*MOBILENET_V2, "--methods", "ps", "--max-accuracy-drop", "2", *MOBILENET_SEARCH],
    },
    "decomposition": {
        # The spine suite's run (the same constraint), re-reported here beside d and d,ps.
        "resnet56-ps": RESNET56_PS,
        # 86 sites / 141 coordinates (Tucker-2 has two ranks): two bisection rounds and
        # four iterations keep these near the ps job's total evaluations.
        "resnet56-d,ps": [*RESNET56, "--methods", "d,ps", "--max-accuracy-drop", "2", "--samples", "16", "--iterations", "4",
                          "--boundary-rounds", "2", *RESNET56_SEARCH[6:]],
        "resnet56-d": [*RESNET56, "--methods", "d", "--max-accuracy-drop", "2", "--samples", "16", "--iterations", "4",
                       "--boundary-rounds", "2", *RESNET56_SEARCH[6:]],
        # 35 sites (the 1x1 convolutions and the classifier). Scored on 250 of the 500 VAL images,
        # which halves the ~40 s an evaluation takes on one CPU thread; TEST stays 500 images.
        "mobilenet_v2-svd": [*MOBILENET_V2, "--methods", "svd", "--max-accuracy-drop", "2", "--val-limit", "250",
                             *MOBILENET_SEARCH],
        # The same comparison on ResNet-20, about 4x cheaper per evaluation (what fitted this session's CPU time).
        **{
            f"resnet20-{methods}": [*RESNET20, "--methods", methods, "--max-accuracy-drop", "5", "--samples", "16",
                                    "--iterations", "4", "--boundary-rounds", "2", *RESNET20_SEARCH[6:]]
            for methods in ("ps", "d", "d,ps")
        },
    },
    "executors": {
        "resnet20-local-b100": [*RESNET20, "--samples", "100", "--iterations", "3", "--bn-recalibrate", "0",
                                "--boundary-rounds", "2", "--max-accuracy-drop", "2", "--no-measure", *ONE_THREAD],
        **{
            f"resnet20-ray{w}": [*RESNET20, "--executor", "ray", "--workers", str(w), "--samples", "40", "--iterations", "3",
                                 "--bn-recalibrate", "0", "--boundary-rounds", "2", "--max-accuracy-drop", "2", "--no-measure"]
            for w in (1, 2)
        },
    },
    # The same search driven by MACs and by the host's measured latency table. resnet56-macs is
    # the spine suite's resnet56-ps run, resumed with the table so its report predicts from it
    # (the table does not change a MACs search; see `seed_from`).
    "latency": {
        "resnet56-macs": [*RESNET56_PS, "--lut", LUT],
        "resnet56-latency": [*RESNET56, "--methods", "ps", "--max-accuracy-drop", "2", *RESNET56_SEARCH, "--lut", LUT,
                             "--cost", "latency"],
        "resnet20-macs": [*RESNET20, "--cost", "macs", "--lut", LUT, "--max-accuracy-drop", "8", *RESNET20_SEARCH],
        "resnet20-latency": [*RESNET20, "--cost", "latency", "--lut", LUT, "--max-accuracy-drop", "8", *RESNET20_SEARCH],
        # Channel counts kept at multiples of 8, which ONNX Runtime runs in its blocked NCHWc layout on x86.
        "resnet20-macs-r8": [*RESNET20, "--cost", "macs", "--lut", LUT, "--max-accuracy-drop", "8", "--round-to", "8",
                             *RESNET20_SEARCH],
        "resnet20-latency-r8": [*RESNET20, "--cost", "latency", "--lut", LUT, "--max-accuracy-drop", "8", "--round-to", "8",
                                *RESNET20_SEARCH],
    },
    # Issue 13: the one-rate rule, the default search and Optuna's TPE and CMA-ES on the identical
    # objective (same cache, same score), each capped at the same paid evaluations, on both threads.
    "search": {
        f"resnet56-{sampler}": [*RESNET56, "--methods", "ps", "--max-accuracy-drop", "2", "--samples", "16",
                                "--iterations", "16", "--bn-recalibrate", "256",
                                "--max-evaluations", "250", "--sampler", sampler, "--threads", "2"]
        for sampler in ("adans", "gaussian", "tpe", "cmaes")
    } | {
        # The same comparison on ImageNet (500 VAL images: 350 ranked on, 150 held back), capped at 100 paid
        # evaluations: one costs about 20x a ResNet-56 one, and the issue allows 30 minutes per search.
        f"mobilenet_v2-{sampler}": [*MOBILENET_V2, "--methods", "ps", "--max-accuracy-drop", "2", "--samples", "10",
                                    "--iterations", "16", "--bn-recalibrate", "128", "--batch-size", "100",
                                    "--max-evaluations", "100", "--sampler", sampler, "--threads", "2"]
        for sampler in ("adans", "tpe", "cmaes", "gaussian")
    },
    "finetune": {
        "resnet56-ps-finetune": [*RESNET56, "--methods", "ps", "--max-accuracy-drop", "8", *RESNET56_SEARCH,
                                 "--train-data", f"{SHARED}/cifar10/train_lossless_4000.npz", "--finetune-epochs", "6",
                                 "--distill"],
    },
    # The search suite's objective and budget for every sampler, three seeds each: what the default rests on.
    "samplers": {
        f"resnet56-{sampler}-seed{seed}": [*RESNET56, "--methods", "ps", "--max-accuracy-drop", "2", "--samples", "16",
                                           "--iterations", "16", "--bn-recalibrate", "256", "--max-evaluations", "250",
                                           "--sampler", sampler, "--seed", str(seed), "--threads", "2"]
        for sampler in ("gaussian", "adans", "tpe", "cmaes") for seed in (0, 1, 2)
    },
    # Issue 15: precision searched with pruning against pruning alone, both priced by memory (bytes at each layer's
    # precision; MACs cannot price int8). The `ps` job also quantizes its whole model after the search
    # (--quantize int8), the post-training alternative a user would try first.
    "int8": {
        f"resnet56-{methods}": [*RESNET56, "--methods", methods, "--cost", "memory", "--max-accuracy-drop", "2",
                                "--samples", "16", "--iterations", "16", "--bn-recalibrate", "256",
                                "--max-evaluations", "150", "--threads", "2",
                                *(["--quantize", "int8"] if methods == "ps" else [])]
        for methods in ("ps", "ps,int8")
    } | {
        # The same on ImageNet, capped at 60 paid evaluations: an int8 candidate is lowered, calibrated and quantized
        # before it is scored, about 40 s on this CPU. Its folded BatchNorm statistics are restored at load, so
        # candidates are re-estimated (on 128 images, as in MOBILENET_SEARCH).
        f"mobilenet_v2-{methods}": [*MOBILENET_V2, "--methods", methods, "--cost", "memory", "--max-accuracy-drop", "2",
                                    "--samples", "10", "--iterations", "16", "--bn-recalibrate", "128", "--batch-size", "100",
                                    "--max-evaluations", "60", "--threads", "2",
                                    *(["--quantize", "int8"] if methods == "ps" else [])]
        for methods in ("ps", "ps,int8")
    } | {
        # A latency search with the int8-aware host table: precision is kept float wherever int8 is slower here.
        f"resnet56-latency-{methods}": [*RESNET56, "--methods", methods, "--cost", "latency", "--lut", INT8_LUT,
                                        "--max-accuracy-drop", "2", "--samples", "16", "--iterations", "16",
                                        "--bn-recalibrate", "256", "--max-evaluations", "150", "--threads", "2"]
        for methods in ("ps", "ps,int8")
    },
}

# Files some jobs read, made by a command of their own the first time a job needs them.
PREREQUISITES: dict[str, list[str]] = {
    INT8_LUT: ["adans-profile", "--target", "host", "--builtin", "cifar_resnet56", "--batch", "1", "--threads", "2",
               "--precisions", "float,int8", "-o", INT8_LUT],
}


def _train_jpeg() -> str:
    """The 50,000 JPEG training images, plain or gzipped (a GPU machine gets the smaller copy)."""
    plain = SHARED / "cifar10" / "train_jpeg.tar"
    return str(plain if plain.exists() else plain.with_suffix(".tar.gz"))


def _train_lossless_outside_val() -> str:
    """Pixel-exact training images 1,000-3,999: the 4,000 minus the 1,000 the benchmarks use as VAL."""
    path = DERIVED / "cifar10_train_lossless_1000_3999.npz"
    if not path.exists():
        source = np.load(SHARED / "cifar10" / "train_lossless_4000.npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=source["x"][1000:], y=source["y"][1000:])
    return str(path)


def _recovery_suite() -> dict[str, list[str]]:
    """Issue 14 at scale: a large allowance for the search, fine-tuning with distillation to recover it."""
    # Sized for one device call (minutes of an H200); the baseline is fine-tuned once, in the one-shot job,
    # for as many epochs as either job's last fine-tune.
    train = ["--train-data", f"{_train_lossless_outside_val()},{_train_jpeg()}", "--distill",
             "--finetune-batch-size", "256", "--finetune-lr", "0.05", "--round-to", "8", "--finetune-epochs", "12"]
    search = [*RESNET56, "--methods", "ps", "--samples", "16", "--iterations", "10", "--bn-recalibrate", "256",
              "--sampler", "adans"]
    # The CPU run (150 minutes on 2 threads): the most accurate plan within half the MACs, then 8 epochs
    # (about 5 minutes each for the pruned model, 8 for the baseline beside it) so both fit the 150 minutes.
    cpu_train = [*train[:train.index("--finetune-epochs")], "--finetune-epochs", "8", "--finetune-baseline"]
    return {
        "resnet56-oneshot": [*search, "--max-accuracy-drop", "15", *train, "--finetune-baseline"],
        "resnet56-rounds2": [*search, "--max-accuracy-drop", "8", *train, "--rounds", "2", "--round-epochs", "4"],
        "resnet56-half-cpu": [*search, "--budgets", "0.5", "--family-finetune", "separate", *cpu_train, "--threads", "2"],
        "resnet20-half-cpu": [*RESNET20, *search[len(RESNET56):], "--budgets", "0.5", "--family-finetune", "separate",
                              *cpu_train, "--threads", "2"],
    }


def _budgets_suite() -> dict[str, list[str]]:
    """Issue 17: one search for three budgets, fine-tuned jointly, against three single-budget compiles with the
    same evaluations in all (a third each), each fine-tuned the same way. One thread per job: the family and the
    singles run side by side on the 2 cores."""
    common = [*RESNET56, "--methods", "ps", "--samples", "16", "--iterations", "6", "--bn-recalibrate", "256",
              "--train-data", _train_lossless_outside_val(), "--finetune-epochs", "4", "--distill", *ONE_THREAD]
    return {
        "resnet56-family": [*common, "--budgets", "0.8", "0.6", "0.4", "--max-evaluations", "150"],
        **{f"resnet56-single-{b}": [*common, "--budgets", b, "--max-evaluations", "50"] for b in ("0.8", "0.6", "0.4")},
    }


SUITE_BUILDERS = {"recovery": _recovery_suite, "budgets": _budgets_suite}


# Jobs whose search is another job's: they start from a copy of it and only re-report.
SEED_FROM = {("latency", "resnet56-macs"): ("spine", "resnet56-ps"), ("decomposition", "resnet56-ps"): ("spine", "resnet56-ps")}


def suite_jobs(suite: str) -> dict[str, list[str]]:
    return SUITE_BUILDERS[suite]() if suite in SUITE_BUILDERS else SUITES[suite]


def _job_dir(suite: str, name: str) -> Path:
    return RUNS / suite / name


def _adans_compile() -> list[str]:
    """The adans of this interpreter: its console script, or the module where the project is not installed."""
    exe = Path(sys.executable).parent / "adans-compile"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "adans_toolchain.cli.compile"]


def on_device(argv: list[str], device: str) -> list[str]:
    """A job's command for DEVICE: on a GPU the host speed is not the target's, so it is not measured."""
    return argv if device == "cpu" else [*argv, "--device", device, "--no-measure"]


def run_job(suite: str, name: str, argv: list[str], deadline: float | None = None) -> Path:
    out = _job_dir(suite, name)
    source = SEED_FROM.get((suite, name))
    if source and not out.exists() and (_job_dir(*source) / "report.json").exists():
        shutil.copytree(_job_dir(*source), out)
        (out / "report.json").unlink()
    resume = ["--resume"] if (out / "config.json").exists() else []
    if (out / "report.json").exists():
        return out
    cmd = [*_adans_compile(), *argv, "-o", str(out), *resume]
    out.parent.mkdir(parents=True, exist_ok=True)
    print("$", shlex.join(cmd), flush=True)
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        return out
    with open(out.parent / f"{name}.log", "a") as log:
        try:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=left,
                                  env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        except subprocess.TimeoutExpired:
            print(f"job {suite}/{name} stopped at the deadline (resumable)", flush=True)
            return out
    if done.returncode:
        print(f"job {suite}/{name} failed (exit {done.returncode}); see {out.parent / f'{name}.log'}", flush=True)
    return out


def _make_prerequisite(path: str) -> None:
    """Run the command that makes `path`, logging it and its minutes beside it. adans-profile writes its table as
    it goes and resumes it, so a killed run is finished by the next; PATH.done says the command completed."""
    done = Path(path + ".done")
    if done.exists():
        return
    cmd = [str(Path(sys.executable).parent / PREREQUISITES[path][0]), *PREREQUISITES[path][1:]]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    print("$", shlex.join(cmd), flush=True)
    start = time.monotonic()
    with open(path + ".log", "a") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
        print(f"made {path} in {(time.monotonic() - start) / 60:.1f} min", file=log, flush=True)
    done.touch()


def _machine() -> str:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _speedups(measured: dict) -> str:
    """Measured speedup at batch 1 / batch 32, as a report's or a family member's `measured` gives them."""
    return " / ".join(f"{measured[k]['speedup']:.2f}×" for k in ("batch_1", "batch_32") if k in measured) or "—"


def _row(name: str, r: dict) -> str:
    b, c, s = r["baseline"], r["compressed"], r["speedup"]
    m = s.get("measured_host", {})
    measured = _speedups(m)
    test = (f"{b['top1_test']:.2f} → {c['top1_test']:.2f}" if "top1_test" in c else "—")
    before_ft = c.get("top1_test_before_finetune")
    if before_ft is not None:
        test += f" (before fine-tuning {before_ft:.2f})"
    search = r["search"]
    t = r["timings_s"]
    predicted = f"{s['predicted']:.2f}×" if "predicted" in s else "—"
    if "predicted" in s and "measured" not in s.get("predicted_source", ""):
        predicted += " (est.)"
    ratio = " / ".join(f"{m[k]['speedup'] / s['theoretical']:.2f}" for k in ("batch_1", "batch_32") if k in m) or "—"
    return (
        f"| {name} | {', '.join(search['methods'])} | {search['cost']['name']} | {b['top1_val']:.2f} → {c['top1_val']:.2f} | {test} | "
        f"{c['macs'] / b['macs']:.1%} | {s['theoretical']:.2f}× | {predicted} | {measured} | {ratio} | {search['evaluations']} | "
        f"{search['evaluations_per_s']:.2f} | {t.get('search_s', 0) / 60:.1f} | {t['total_s'] / 60:.1f} |"
    )


def _rule_cells(rule: dict | None) -> str:
    if not rule or rule.get("top1_test") is None:
        return "—"
    return f"r = {rule['rate']:.3f}: {rule['macs_ratio']:.1%}, {rule['top1_val']:.2f} / {rule['top1_test']:.2f}"


def _search_row(name: str, r: dict) -> str:
    """One-rate rule beside the searched plan (issue 13), TEST of the emitted model."""
    b, c, s = r["baseline"], r["compressed"], r["search"]
    rule = s.get("one_rate_rule") or {}
    rule_cells = f"{_rule_cells(rule)} | {_rule_cells(rule.get('at_searched_cost'))}"
    test = f"{b['top1_test']:.2f} → {c['top1_test']:.2f}" if "top1_test" in c else "—"
    images = s.get("images_evaluated")
    return (
        f"| {name} | {s['sampler']} | {rule_cells} | {c['macs'] / b['macs']:.1%} | {test} | {s['evaluations']} | "
        f"{s.get('early_rejected', 0)} | {images if images is not None else '—'} | {s['evaluations_per_s']:.3f} | "
        f"{r['timings_s'].get('search_s', 0) / 60:.1f} |"
    )


def _table(about: list[str], columns: list[str], rows: list[str]) -> list[str]:
    """A markdown table under the lines saying what it shows; the separator follows the columns."""
    return [*about, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows]


def render_search(rows: list) -> list[str]:
    return _table([
        "One-rate rule: r, MACs, top-1 SEARCH-VAL (substituted) / TEST (substituted, BatchNorm re-estimated when",
        "candidates are), at the threshold and at the rate whose cost is nearest the searched plan's (scored after",
        "the search: the comparison at equal cost); searched: MACs and TEST of the emitted model; evaluations are",
        "paid ones (cache misses), early-rejected ones stopped before the end of VAL; search minutes exclude loading",
        "and lowering.",
    ], ["job", "sampler", "one-rate rule", "one-rate rule at the searched cost", "searched MACs", "top-1 TEST", "evaluations",
        "early-rejected", "images", "eval/s", "search min"], [_search_row(name, r) for name, _, r in rows])


def _int8_row(name: str, r: dict) -> str:
    """The float model.onnx beside its model_int8.onnx: bytes, TEST, measured speedup against the float baseline."""
    q, c, b = r.get("int8") or {}, r["compressed"], r["baseline"]
    if not q:
        return f"| {name} | {c['top1_test']:.2f} | — | — | — | — |"
    size = q["file_bytes"]
    m = q.get("measured") or {}
    speed = " / ".join(f"{m[k]['float_speedup']:.2f}× / {m[k]['int8_speedup']:.2f}×" for k in ("batch_1", "batch_32") if k in m)
    return (f"| {name} | {b['top1_test']:.2f} → {q['top1']['test']['float']:.2f} / {q['top1']['test']['int8']:.2f} | "
            f"{size['float'] / 1e6:.2f} / {size['int8'] / 1e6:.2f} MB | {len(q['layers'])} of {len(q['layers']) + len(q['float_layers'])} | "
            f"{speed or '—'} | {q['validation'].get('top1_agreement', float('nan')):.3f} |")


def render_budgets(runs_of: str, names: list[str]) -> list[str]:
    """Every member of every job's family (OUT/budgets/family.json): the one-search family against single compiles."""
    rows = []
    for name in names:
        path = _job_dir(runs_of, name) / "budgets" / "family.json"
        if not path.exists():
            continue
        family = json.loads(path.read_text())
        e = family["evaluations"]
        spent = f"{e['paid']} ({e['one_rate_rule']} + {e['boundary']} + {e['paid'] - e['one_rate_rule'] - e['boundary']})"
        for m in family["members"]:
            t, speed = m["top1"], m.get("measured") or {}
            measured = _speedups(speed)
            before = t.get("test_before_finetune")
            test = f"{before:.2f} → {t['test']:.2f}" if before is not None else f"{t['test']:.2f}"
            rows.append(f"| {name} | {m['budget']:.2f} | {m['macs_ratio']:.1%} | {test} | {measured} | {spent} |")
    return _table([
        "Per member: MACs, TEST top-1 before → after fine-tuning (joint for the family; a single compile's one member",
        "is fine-tuned alone), measured ONNX Runtime speedup over the baseline at batch 1 / 32 (one thread), and the",
        "job's paid evaluations (one-rate rule + boundary + search).",
    ], ["job", "budget", "MACs", "TEST before → after fine-tuning", "measured b1 / b32",
        "evaluations (rule + boundary + search)"], rows)


def render_int8(rows: list) -> list[str]:
    return _table([
        "Each job's float model (model.onnx) beside its int8 model (model_int8.onnx): TEST top-1 float / int8, file",
        "size float / int8, layers in int8, measured ONNX Runtime speedup over the float baseline at batch 1 and 32",
        "(float / int8 each), and the int8 model's top-1 agreement with its simulation on VAL (validation).",
    ], ["job", "TEST top-1 baseline → float / int8", "file float / int8", "int8 layers",
        "measured b1 float / int8, b32 float / int8", "agreement"], [_int8_row(name, r) for name, _, r in rows])


CHECKPOINTS = (50, 100, 150, 200, 250)  # search samples at which the samplers' best feasible plans are compared


def _best_feasible_by_samples(history: Path) -> tuple[int, dict[int, float]]:
    """Search samples in a job's journal, and the cheapest feasible cost ratio after each checkpoint's count."""
    evals = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    evals = [e for e in evals if e.get("type") == "eval"]
    best, at = 1.0, {}
    for count, e in enumerate(evals, 1):
        if e["info"].get("feasible"):
            best = min(best, float(e["info"]["cost_ratio"]))
        if count in CHECKPOINTS:
            at[count] = best
    return len(evals), {**at, len(evals): best}


def render_convergence(runs_of: str, names: list[str]) -> list[str]:
    """Every job with a journal, finished or stopped at a deadline: cost of its best feasible plan (SEARCH-VAL) at
    equal search samples. What a sampler is judged on; the one-rate rule and boundary come before and are shared."""
    lines = [
        "Best feasible plan on SEARCH-VAL (MACs of the baseline's) after N search samples, from each job's journal",
        "(history.jsonl: the search's own samples, after the one-rate rule and the boundary); a job stopped at the",
        "deadline has fewer samples (—).",
        "",
        "| job | samples | " + " | ".join(f"@{n}" for n in CHECKPOINTS) + " | final | TEST of the emitted model |",
        "|---|---|" + "---|" * (len(CHECKPOINTS) + 2),
    ]
    for name in names:
        history = _job_dir(runs_of, name) / "history.jsonl"
        if not history.exists():
            continue
        count, at = _best_feasible_by_samples(history)
        report = _job_dir(runs_of, name) / "report.json"
        test = "—"
        if report.exists():
            r = json.loads(report.read_text())
            test = f"{r['baseline']['top1_test']:.2f} → {r['compressed']['top1_test']:.2f} ({r['compressed']['macs'] / r['baseline']['macs']:.1%} MACs)"
        cells = [f"{at[n]:.1%}" if n in at else "—" for n in CHECKPOINTS]
        lines.append(f"| {name} | {count} | " + " | ".join(cells) + f" | {at[count]:.1%} | {test} |")
    return lines


# A job re-emitted by a resume (a newer report from the same search, which evaluates nothing) keeps the report
# of the run that searched under this name; its evaluation counts and times are the search's.
FIRST_RUN_REPORT = "report.first-run.json"
FIRST_RUN_SEARCH_FIGURES = ("evaluations", "evaluations_per_s", "early_rejected", "images_evaluated", "cache_hits")


def _search_figures_of_first_run(job_dir: Path, r: dict) -> None:
    first = job_dir / FIRST_RUN_REPORT
    if first.exists():
        searched = json.loads(first.read_text())
        r["search"].update({k: searched["search"][k] for k in FIRST_RUN_SEARCH_FIGURES if k in searched["search"]})
        r["timings_s"] = searched["timings_s"]


def _recovery_row(name: str, r: dict) -> str:
    """TEST of the baseline as given and fine-tuned the same way, the compressed model before and after fine-tuning,
    the one-rate rule at the searched cost (before fine-tuning), training throughput and minutes."""
    b, c, ft, t = r["baseline"], r["compressed"], r.get("finetuning") or {}, r["timings_s"]
    reference = b.get("top1_test_finetuned", b["top1_test"])
    rule = ((r["search"].get("one_rate_rule") or {}).get("at_searched_cost") or {})
    rule_cell = f"{rule['macs_ratio']:.1%}: {rule['top1_test']:.2f}" if rule.get("top1_test") is not None else "—"
    speed = " / ".join(_or_dash((ft.get(k) or {}).get("images_per_s"), "{:.0f}") for k in ("compressed", "baseline"))
    return (f"| {name} | {c['macs'] / b['macs']:.1%} | {b['top1_test']:.2f} / {_or_dash(b.get('top1_test_finetuned'))} | "
            f"{_or_dash(c.get('top1_test_before_finetune'))} → **{c['top1_test']:.2f}** | {c['top1_test'] - reference:+.2f} | "
            f"{rule_cell} | {_speedups(r['speedup'].get('measured_host', {}))} | {speed} | "
            f"{sum(t.get(k, 0) for k in SEARCH_PHASES) / 60:.0f} | {t.get('finetune_s', 0) / 60:.0f} | {t['total_s'] / 60:.0f} |")


SEARCH_PHASES = ("priorities_s", "one_rate_s", "boundary_s", "search_s")  # timings_s of the search, all its phases


def _or_dash(value: float | None, form: str = "{:.2f}") -> str:
    return "—" if value is None else form.format(value)


def render_recovery(rows: list) -> list[str]:
    return _table([
        "The whole pipeline, end to end: TEST top-1 of the baseline as given / fine-tuned the same way (same images,",
        "epochs and distillation), of the compressed model before → after fine-tuning, and its drop against the",
        "fine-tuned baseline; the one-rate rule at the searched plan's MACs (TEST before fine-tuning); measured",
        "ONNX Runtime speedup over the baseline at batch 1 / 32; training images/s (wall clock, data loading",
        "included) of the compressed / baseline model; minutes of search (priorities, one-rate rule, boundary and sampling), of",
        "fine-tuning (both models) and in all.",
    ], ["job", "MACs", "TEST baseline / fine-tuned", "TEST compressed before → after fine-tuning", "drop", "rule at that cost",
        "measured b1 / b32", "train images/s", "search min", "fine-tune min", "total min"],
        [_recovery_row(name, r) for name, _, r in rows])


def render(suite: str, runs_of: str, machine: str | None = None) -> str:
    rows = []
    for name, argv in suite_jobs(suite).items():
        report = _job_dir(runs_of, name) / "report.json"
        if report.exists():
            r = json.loads(report.read_text())
            source = SEED_FROM.get((suite, name))
            if source and (_job_dir(*source) / "report.json").exists():
                # A re-reported copy evaluates nothing new: its search figures are the source's.
                first = json.loads((_job_dir(*source) / "report.json").read_text())
                r["search"], r["timings_s"] = first["search"], first["timings_s"]
                name = f"{name} (search of {source[0]}/{source[1]})"
            _search_figures_of_first_run(_job_dir(runs_of, name), r)
            rows.append((name, argv, r))
    date = datetime.date.today().isoformat()
    lines = [
        f"### Suite `{suite}` (tools/bench_compile.py)",
        "",
        f"Machine: {machine or _machine()}. Date: {date}. Each row is one `adans-compile` run; command lines below.",
        "Accuracy in %, VAL = the images the search scored, TEST = held-out images; MACs = compressed / baseline;",
        "theoretical = MACs ratio; predicted = the latency cost model for the target (est. = roofline estimate, no table);",
        "measured = ONNX Runtime on this host, batch 1 / batch 32 (min of interleaved repetitions), and measured / theoretical;",
        "time in minutes.",
        "",
        "| job | methods | cost | top-1 VAL | top-1 TEST | MACs | theoretical | predicted | measured | measured / theoretical | evaluations | eval/s | search min | total min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(name, r) for name, _, r in rows]
    if suite in ("search", "samplers"):
        lines += ["", *render_search(rows)]
    if suite in ("search", "samplers"):
        lines += ["", *render_convergence(runs_of, list(suite_jobs(suite)))]
    if suite == "int8":
        lines += ["", *render_int8(rows)]
    if suite == "budgets":
        lines += ["", *render_budgets(runs_of, list(suite_jobs(suite)))]
    if suite == "recovery":
        lines += ["", *render_recovery(rows)]
    lines += ["", "Commands:", ""]
    lines += [f"- `{name}`: `{r['command']}`" for name, _, r in rows]
    return "\n".join(lines) + "\n"


def write_markdown(suite: str, heading: str, runs_of: str, machine: str | None = None) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"## {heading}\n\n" + render(suite, runs_of, machine)
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)


HEADINGS = {
    "spine": "Compile end to end (issue 2)",
    "decomposition": "Decomposition and joint search (issue 4)",
    "executors": "Search speed and executors (issue 7)",
    "finetune": "Accuracy recovery (issue 8)",
    "latency": "Latency-driven vs MACs-driven search (issue 5)",
    "search": "The search against the one-rate rule, TPE and CMA-ES (issue 13)",
    "samplers": "Samplers on ResNet-56, three seeds each (issue 13)",
    "recovery": "The whole pipeline at scale: search and fine-tuning (issue 14)",
    "int8": "Precision searched with pruning: ps against ps,int8 (issue 15)",
    "budgets": "A family of budgets from one search against single compiles (issue 17)",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=sorted([*SUITES, *SUITE_BUILDERS]), required=True)
    p.add_argument("--jobs", nargs="*", help="only these jobs of the suite")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: where every job evaluates and fine-tunes")
    p.add_argument("--parallel", type=int, default=1, help="jobs run at once (on a GPU machine; never for CPU timings)")
    p.add_argument("--deadline", type=float, help="stop every job still running after this many seconds")
    p.add_argument("--write-md", action="store_true", help="render the suite's section of BENCHMARKS.md and exit")
    p.add_argument("--machine", help="with --write-md: the machine the runs were made on (default: this one)")
    args = p.parse_args()
    deadline = None if args.deadline is None else time.monotonic() + args.deadline
    runs_of = args.suite if args.device == "cpu" else f"{args.suite}-{args.device.split(':')[0]}"
    if args.write_md:
        write_markdown(args.suite, HEADINGS[args.suite] + ("" if args.device == "cpu" else f", on {args.device}"), runs_of,
                       args.machine)
        return
    jobs = [(name, on_device(argv, args.device)) for name, argv in suite_jobs(args.suite).items()
            if not args.jobs or name in args.jobs]
    for path in sorted({a for _, argv in jobs for a in argv if a in PREREQUISITES}):
        _make_prerequisite(path)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(lambda job: run_job(runs_of, *job, deadline=deadline), jobs))


if __name__ == "__main__":
    main()
