"""Settings of one compile, as typed, frozen data: every setting is defined here, once.

Each field of `CompileConfig` carries its command-line form in its metadata
(see `setting`): flags, help, help section, choices, metavar, nargs, and
whether a resumed run may change it (`resumable`). `adans-compile` builds its
parser and the config from these fields; OUT/config.json records the
settings (`CompileConfig.resume_key`) and a resume compares all of them but
`RESUMABLE_SETTINGS`. A config checks itself when it is built and raises
ConfigError, so an invalid one never exists, whoever builds it (CLI or test).
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any, Callable

from cost_models import cost_model_names

from adans_toolchain.errors import ConfigError
from adans_toolchain.search import SAMPLER_NAMES, make_sampler
from adans_toolchain.search.boundary import BOUNDARY_GROUPS, BOUNDARY_ROUNDS, DIAGONAL_ROUNDS

# Help sections, in the order `adans-compile --help` lists them.
INPUTS = "model and data"
CONSTRAINT = "accuracy constraint"
SEARCH = "compression search"
FINETUNE = "fine-tuning the emitted model"
EXECUTION = "where candidates are evaluated"
OUTPUT = "measurement and output"
GROUPS = (INPUTS, CONSTRAINT, SEARCH, FINETUNE, EXECUTION, OUTPUT)

ARCH_BUILTINS = (
    "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110",
    "tf_mobilenet_v1_0.5_160", "tf_mobilenet_v1_0.75_192",
)  # frontend.loading.builtin_arch_names(); a test keeps the two equal

# The default search budget, for the help of --samples.
_BUDGET = (
    "The default budget (50 x 20 evaluations, each one pass over VAL, plus the boundary bisection) takes "
    "about an hour on a 2-core CPU for a ResNet-20-size model on 1,000 images; the bundled example uses "
    "--samples 20 --iterations 8."
)


def setting(
    default: Any = None,
    *,
    required: bool = False,
    help: str,
    group: str,
    flags: tuple[str, ...] = (),
    metavar: str | tuple[str, ...] | None = None,
    nargs: int | str | None = None,
    choices: tuple[Any, ...] | None = None,
    type: Callable[[str], Any] | None = None,
    const: Any = None,
    exclusive: str | None = None,
    resumable: bool | Callable[["CompileConfig"], bool] = False,
) -> Any:
    """A setting: a dataclass field with its command-line form in its metadata.

    flags: the option strings (default `--name-with-dashes`; a bare name is a positional).
    type: converts one command-line word (default: from the field's annotation).
    exclusive: settings with the same name are mutually exclusive on the command line.
    resumable: True if a resumed run may give another value (it does not change what was
    computed); a predicate of the config if that depends on other settings (the setting is
    then left out of OUT/config.json while the predicate holds).
    required: the setting has no default (a field without one).
    """
    metadata = {
        "help": help, "group": group, "flags": flags, "metavar": metavar, "nargs": nargs, "choices": choices,
        "type": type, "const": const, "exclusive": exclusive, "resumable": resumable,
    }
    return field(metadata=metadata) if required else field(default=default, metadata=metadata)


def comma_separated(text: str) -> tuple[str, ...]:
    """'d, ps' -> ('d', 'ps')."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


def _early_rejection(text: str) -> str:
    """--early-rejection: 'exact', 'off' or a confidence in (0, 1), normalised."""
    from adans_toolchain.evaluation.rejection import EarlyRejection

    try:
        rule = EarlyRejection.from_setting(text, 100.0)
    except ValueError as e:
        raise ConfigError(f"--early-rejection: {e}") from None
    return "off" if rule is None else "exact" if rule.confidence is None else repr(rule.confidence)


def _early_rejection_off(cfg: "CompileConfig") -> bool:
    # Off is how every run before --early-rejection evaluated (and their OUT/config.json
    # lacks the key), so such runs resume with --early-rejection off; exact or a
    # confidence changes recorded accuracies and is compared on resume.
    return cfg.early_rejection == "off"


def _lut_only_feeds_the_report(cfg: "CompileConfig") -> bool:
    # Unless the search minimises latency, the table only feeds the report's
    # predicted latency: a finished MACs search can be resumed with a table to re-report it.
    return cfg.cost != "latency"


def _single_round(cfg: "CompileConfig") -> bool:
    # One round is the compile as it always was: its OUT/config.json holds neither --rounds nor --round-epochs,
    # as runs from before --rounds do, so those resume; with more rounds both are recorded and compared.
    return cfg.rounds == 1


@dataclass(frozen=True)
class CompileConfig:
    # -- required (no default, so declared first), then model and data ------
    model: str = setting(
        required=True, flags=("model",), nargs="?", metavar="MODEL", group=INPUTS,
        help="the pretrained classifier to compress: a PyTorch state_dict or checkpoint (.th/.pt, with --arch), "
        "a TorchScript archive, an ONNX file (.onnx; it carries its own architecture, so no --arch), "
        "or a whole pickled module (with --trust-pickle)",
    )
    data: str = setting(
        required=True, metavar="VAL", group=INPUTS,
        help="validation set (VAL) scored during the search: .npz with x (NHWC uint8, or NCHW float already "
        "preprocessed) and y, or an ImageFolder directory",
    )
    out: str = setting(required=True, flags=("-o", "--out"), metavar="OUT", group=OUTPUT, resumable=True,
                       help="output directory (a run directory may be moved and resumed elsewhere)")
    target: str = setting("host", group=INPUTS, help="device to compile for (see --list-targets)")
    arch: str | None = setting(
        group=INPUTS,
        help=f"architecture of a state_dict: a built-in ({', '.join(ARCH_BUILTINS)}), torchvision:NAME for any "
        "torchvision classifier (e.g. torchvision:resnet18), or package.module:callable returning an nn.Module",
    )
    trust_pickle: bool = setting(False, group=INPUTS,
                                 help="allow loading a whole pickled module (runs code from the file)")
    test_data: str | None = setting(metavar="TEST", group=INPUTS, resumable=True,
                                    help="held-out test set (TEST), only for the report; same formats as --data")
    val_limit: int | None = setting(metavar="N", group=INPUTS, help="use only the first N validation images")
    mean: tuple[float, ...] | None = setting(nargs="+", metavar="M", group=INPUTS,
                                             help="per-channel mean of [0,1] pixels (default ImageNet's)")
    std: tuple[float, ...] | None = setting(nargs="+", metavar="S", group=INPUTS,
                                            help="per-channel std of [0,1] pixels (default ImageNet's)")
    input_size: tuple[int, int] | None = setting(
        nargs=2, metavar=("H", "W"), group=INPUTS,
        help="model input size (ImageFolder images are resized and centre-cropped; default: the data's own)",
    )
    label_offset: int = setting(0, metavar="K", group=INPUTS, help="added to every label (1 for 1001-class TF models)")
    # -- the search and its accuracy constraint ------------------------------
    methods: tuple[str, ...] = setting(
        ("ps",), type=comma_separated, group=SEARCH,
        help="comma separated: ps (channel pruning), pn (unstructured magnitude pruning), svd (Gemm/1x1 conv), "
        "tucker (kxk conv), d = svd,tucker, int8 (each layer's precision, float or int8: the plan's int8 layers "
        "are written as OUT/model_int8.onnx beside the float model.onnx); e.g. d,ps decomposes then prunes",
    )
    sampler: str = setting(
        "adans", choices=SAMPLER_NAMES, group=SEARCH,
        help="how AdaNS draws each iteration's samples: adans (default) screens many of the paper's gaussian "
        "proposals with a model of accuracy fitted on the history and the exact cost, and evaluates the most "
        "promising (at equal evaluations it reached lower MACs than gaussian, TPE and CMA-ES on ResNet-20, and "
        "than gaussian and TPE on ResNet-56: BENCHMARKS.md); gaussian (the paper's best), genetic (selection, crossover, mutation), zoom "
        "(refines the best boxes), or uniform (no adaptation, a baseline); or Optuna's tpe or cmaes instead of "
        "AdaNS (extra: pip install -e \".[optuna]\")",
    )
    cost: str = setting(
        "macs", choices=tuple(cost_model_names()), group=SEARCH,
        help="what the search minimises: macs (exact), latency (lookup table profiled on the target, "
        "else a roofline estimate), memory (weight + peak activation bytes)",
    )
    lut: str | None = setting(
        metavar="LUT", group=SEARCH, resumable=_lut_only_feeds_the_report,
        help="latency lookup table from adans-profile (default: the target's own table, else a roofline estimate)",
    )
    accuracy_threshold: float | None = setting(metavar="PCT", group=CONSTRAINT, exclusive="constraint",
                                               help="minimum top-1 on VAL, in percent")
    max_accuracy_drop: float | None = setting(metavar="POINTS", group=CONSTRAINT, exclusive="constraint",
                                              help="maximum top-1 drop on VAL, in points (default: 2)")
    accuracy_floor: float | None = setting(
        metavar="POINTS", group=CONSTRAINT,
        help="floor of the accuracy drop in the score (default: the allowed drop)",
    )
    holdout: float = setting(
        0.3, metavar="FRACTION", group=CONSTRAINT,
        help="hold back this fraction of VAL (seeded, stratified by label): the search ranks candidates on the "
        "rest, and the emitted plan is chosen among the best few on the held-back images, whose accuracy no "
        "candidate was selected on (0: rank and choose on all of VAL)",
    )
    rescore_top: int = setting(
        5, metavar="K", group=CONSTRAINT, resumable=True,
        help="how many of the search's best feasible plans are scored again on the held-back part of VAL "
        "(--holdout); a resume may change it (the search does not depend on it)",
    )
    priority: str = setting("taylor", choices=("taylor", "l1"), group=SEARCH,
                            help="channel priority: first-order Taylor, or the L1 norm of the weights")
    round_to: int | None = setting(metavar="N", group=SEARCH,
                                   help="keep a multiple of N channels in every group (e.g. 8 or 16)")
    bn_recalibrate: int = setting(500, metavar="N", group=SEARCH,
                                  help="re-estimate BatchNorm statistics of every candidate on N images (0 = off)")
    calibration_data: str | None = setting(metavar="IMAGES", group=SEARCH,
                                           help="images for --bn-recalibrate (default: the VAL images)")
    early_rejection: str = setting(
        "exact", metavar="RULE", group=SEARCH, type=_early_rejection, resumable=_early_rejection_off,
        help="stop evaluating a candidate after 20, 40, 60 or 80 percent of VAL (in a seeded random order) once it "
        "falls below the threshold: exact (only when even every remaining image right would not reach it, so no "
        "candidate that meets it is ever stopped), a confidence such as 0.999 (a Hoeffding-Serfling bound: a "
        "candidate that meets the threshold is stopped with probability at most 1 - confidence), or off (every "
        "candidate on all of VAL). A stopped candidate is recorded with its accuracy on the images it saw",
    )
    # -- fine-tuning (runs after the search; its own checkpoint checks its settings) --
    train_data: tuple[str, ...] | None = setting(
        metavar="TRAIN[,TRAIN...]", type=comma_separated, group=FINETUNE, resumable=True,
        help="training images for fine-tuning, several separated by commas and mixed into one set: .npz (x, y), an "
        "ImageFolder directory, or a tar of one (.tar, read in place, or .tar.gz); sorted class folder names are "
        "labels 0..K-1, and an npz's labels must number the same classes",
    )
    finetune_epochs: int = setting(0, metavar="E", group=FINETUNE, resumable=True,
                                   help="epochs of fine-tuning (0: none)")
    finetune_lr: float = setting(0.01, metavar="LR", group=FINETUNE, resumable=True,
                                 help="initial SGD learning rate (cosine schedule)")
    finetune_batch_size: int = setting(128, metavar="N", group=FINETUNE, resumable=True, help="fine-tuning batch size")
    distill: bool = setting(False, group=FINETUNE, resumable=True,
                            help="add knowledge distillation from the original model's logits")
    finetune_baseline: bool = setting(
        False, group=FINETUNE, resumable=True,
        help="also fine-tune the baseline for E epochs on TRAIN, for a fair comparison when TRAIN is new data",
    )
    rounds: int = setting(
        1, metavar="R", group=SEARCH, resumable=_single_round,
        help="iterative compression: R rounds of search then fine-tuning, each round pruning the previous round's "
        "fine-tuned model further, every round held to the same accuracy threshold from the original model; the "
        "last round fine-tunes for --finetune-epochs, the others for --round-epochs; each round spends a whole search "
        "budget, in OUT/rounds/<k>/ (R > 1 needs --methods ps, --train-data and --finetune-epochs; 1: one search, "
        "then fine-tuning if asked)",
    )
    round_epochs: int | None = setting(
        metavar="E", group=FINETUNE, resumable=_single_round,
        help="with --rounds R > 1: fine-tuning epochs of every round but the last (default: --finetune-epochs // R, "
        "at least 1)",
    )
    budgets: tuple[float, ...] | None = setting(
        nargs="+", metavar="B", group=SEARCH,
        help="a family of models from one search: for each budget B (a fraction of the baseline's --cost, e.g. "
        "0.8 0.6 0.4; distinct, in (0, 1]) the most accurate plan found whose cost is within it, each nested in the "
        "next larger one's channels, in OUT/budgets/<B>/ (model.onnx, plan.json, report.*), with "
        "OUT/budgets/family.json, family.md and pareto.png; --iterations is split among the budgets, every "
        "candidate runs on all of VAL (no early rejection), and OUT's own files are the largest budget's member",
    )
    family_finetune: str | None = setting(
        metavar="HOW", choices=("joint", "separate"), group=FINETUNE, resumable=True,
        help="with --budgets and --finetune-epochs: joint (the default) fine-tunes the family as one set of weights, "
        "the largest member's, by the sandwich rule (each step: the largest member, the smallest and two others "
        "drawn at random, one optimizer step), then re-estimates each member's BatchNorm statistics, so every "
        "member's weights stay slices of OUT/budgets/shared_weights.onnx (needs --methods ps; not with "
        "--finetune-baseline); separate fine-tunes each member on its own (its own weights, no longer slices)",
    )
    samples: int = setting(50, metavar="B", group=SEARCH, help="samples per iteration, b. " + _BUDGET)
    iterations: int = setting(20, metavar="T", group=SEARCH, resumable=True,
                              help="iterations, T, including the initial batch; a resume may add more. The default "
                              "budget takes about an hour on a 2-core CPU (see --samples).")
    boundary_rounds: int = setting(
        BOUNDARY_ROUNDS, metavar="R", group=SEARCH,
        help="boundary bisection rounds per site (or group of sites), one evaluation each, upward from the one-rate "
        "rule's level, which every site is known to tolerate (0: that level is the boundary)",
    )
    boundary_groups: int = setting(
        BOUNDARY_GROUPS, metavar="G", group=SEARCH,
        help="boundary bisection: with more searched coordinates than G, neighbouring ones (in graph order) are "
        f"bisected together in G groups, so the boundary costs at most G x R + {DIAGONAL_ROUNDS} evaluations",
    )
    max_evaluations: int | None = setting(
        metavar="N", group=SEARCH, resumable=True,
        help="evaluate at most N candidates in all (one-rate rule, boundary and search; evaluations already in "
        "OUT's cache count, repeats do not): the compile stops evaluating where N is reached and emits the best "
        "found by then; a resume with a larger N goes on from there",
    )
    seed: int = setting(0, group=SEARCH,
                        help="seed of every random draw (search, fine-tuning): the same seed and settings give "
                        "the same search history and result")
    # -- where candidates are evaluated (does not change their accuracy) ------------
    device: str = setting("cpu", group=EXECUTION, help="where candidates are evaluated: cpu or cuda")
    precision: str = setting(
        "auto", choices=("auto", "fp32", "bf16"), group=EXECUTION,
        help="candidate evaluation precision (auto: bf16 + channels-last on CUDA when it keeps the baseline's "
        "top-1 within 0.1 point; fp32 channels-last on the CPU)",
    )
    candidates: str = setting(
        "sliced", choices=("sliced", "zeroed"), group=EXECUTION, resumable=True,
        help="how search candidates run: sliced (pruned channels cut out of the PyTorch module, so a candidate costs "
        "what it keeps; checked against zeroed when the evaluator is built, and groups whose channel count the "
        "model's code spells stay zeroed) or zeroed (the full-size model with pruned channels' readers zeroed: the "
        "reference)",
    )
    executor: str = setting("local", choices=("local", "multi-gpu", "ray"), group=EXECUTION, resumable=True,
                            help="where candidates are evaluated: in process, one worker per GPU, or Ray actors")
    workers: int | None = setting(metavar="N", group=EXECUTION, resumable=True,
                                  help="worker count for --executor multi-gpu/ray (default: GPUs / CPUs)")
    ray_address: str | None = setting(metavar="ADDR", group=EXECUTION, resumable=True,
                                      help="an existing Ray cluster (default: start a local one)")
    threads: int | None = setting(metavar="N", group=EXECUTION, resumable=True,
                                  help="CPU threads for PyTorch and ONNX Runtime (default: the target's)")
    batch_size: int = setting(250, metavar="N", group=EXECUTION, help="evaluation batch size")
    # -- measurement and output ----------------------------------------------
    measure_batches: tuple[int, ...] = setting((1, 32), nargs="+", metavar="N", group=OUTPUT,
                                               help="batch sizes to measure speed at")
    measure_budget_s: float = setting(8.0, flags=("--measure-budget",), metavar="SECONDS", group=OUTPUT,
                                      resumable=True, help="seconds of timing per batch size")
    no_measure: bool = setting(False, group=OUTPUT, resumable=True, help="skip the speed measurement")
    quantize: str | None = setting(
        choices=("int8",), metavar="PRECISION", group=OUTPUT, resumable=True,
        help="also write OUT/model_int8.onnx: the emitted model (after fine-tuning, if any) quantized after training "
        "(QDQ: int8 weights per channel, uint8 activations calibrated on the BatchNorm calibration images), checked "
        "against its simulation, scored, measured and reported beside the float model",
    )
    resume: bool = setting(False, nargs="?", const=True, type=str, metavar="OUT", group=OUTPUT, resumable=True,
                           help="continue the run in OUT (or -o) with the same settings")
    overwrite: bool = setting(False, group=OUTPUT, resumable=True, help="replace a previous run in OUT")
    debug: bool = setting(False, group=OUTPUT, resumable=True, help="show tracebacks")
    # Not a setting: the command line, for the report.
    command: str = field(default="", compare=False, metadata={"resumable": True})

    def __post_init__(self) -> None:
        methods = self.canonical_methods  # unknown names are a ConfigError
        if methods == ("pn",) and self.cost in ("macs", "latency"):
            raise ConfigError(
                f"unstructured pruning alone does not change {'MACs' if self.cost == 'macs' else 'latency'} "
                "(dense kernels run the zeros); search it with --cost memory, or combine it with ps or d"
            )
        if self.sampler not in SAMPLER_NAMES:
            raise ConfigError(f"unknown sampler '{self.sampler}'; choose one of {', '.join(SAMPLER_NAMES)}")
        make_sampler(self.sampler)  # a sampler whose optional extra is missing is a ConfigError now, not mid-run
        if self.accuracy_threshold is not None and self.max_accuracy_drop is not None:
            raise ConfigError("give either --accuracy-threshold or --max-accuracy-drop, not both")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise ConfigError("--max-accuracy-drop must be >= 0 points")
        if self.accuracy_threshold is not None and not 0 < self.accuracy_threshold <= 100:
            raise ConfigError("--accuracy-threshold is a top-1 percentage in (0, 100]")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError("--round-to must be a positive channel count (e.g. 8)")
        if not 0 <= self.holdout < 1:
            raise ConfigError("--holdout is the fraction of VAL held back for choosing the plan, in [0, 1) (0 turns it off)")
        if self.rescore_top < 1:
            raise ConfigError("--rescore-top is a number of plans (>= 1)")
        if self.bn_recalibrate < 0:
            raise ConfigError("--bn-recalibrate is a number of images (0 turns it off)")
        for flag, value in (("--threads", self.threads), ("--workers", self.workers), ("--batch-size", self.batch_size),
                            ("--val-limit", self.val_limit)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1 (leave it out for the default)")
        _early_rejection(self.early_rejection)
        if self.samples < 2 or self.iterations < 1:
            raise ConfigError("--samples must be >= 2 and --iterations >= 1")
        if self.boundary_rounds < 0 or self.boundary_groups < 1:
            raise ConfigError("--boundary-rounds must be >= 0 and --boundary-groups >= 1")
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise ConfigError("--max-evaluations is a number of candidate evaluations (>= 1)")
        if self.quantize not in (None, "int8"):
            raise ConfigError(f"--quantize {self.quantize}: the only precision is int8")
        self._check_searched_int8(methods)
        if self.priority not in ("taylor", "l1"):
            raise ConfigError("--priority must be taylor or l1")
        if self.device.startswith("cuda"):
            import torch  # only here: building a config does not load PyTorch

            if not torch.cuda.is_available():
                raise ConfigError("--device cuda was given but PyTorch sees no CUDA device; use --device cpu")
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std)):
            raise ConfigError("give --mean and --std together, with one value per image channel each")
        self._check_rounds(methods)
        self._check_budgets()
        if self.cost == "latency" and "int8" in methods:
            # Reads the lookup table, so only for the searches it concerns: a table without int8 entries is refused now.
            from adans_toolchain.pipeline.costing import check_latency_precisions

            check_latency_precisions(self.cost, methods, self.target, self.lut)

    def _check_searched_int8(self, methods: tuple[str, ...]) -> None:
        """--methods ...,int8 searches which layers run in int8; what it cannot be combined with (yet)."""
        if "int8" not in methods:
            return
        if self.cost == "macs":
            raise ConfigError("int8 runs the same multiply-adds in integers, so MACs cannot price it: search --methods "
                              f"{','.join(self.methods)} with --cost memory (bytes at each layer's precision) or --cost latency")
        if self.quantize:
            raise ConfigError("--quantize int8 quantizes every layer after the search, --methods ...,int8 searches which "
                              "layers to quantize: give one of them")
        if self.executor != "local":
            raise ConfigError(f"--methods ...,int8 evaluates int8 candidates in this process (each is lowered and "
                              f"quantized); use --executor local, not {self.executor}")
        if self.budgets is not None:
            raise ConfigError("--budgets does not search precision yet: leave int8 out of --methods (or add --quantize int8)")

    def _check_rounds(self, methods: tuple[str, ...]) -> None:
        """--rounds and --round-epochs; resolves the default of --round-epochs, so OUT/config.json records the
        epochs the intermediate rounds actually train (a resume that would change them is refused)."""
        if self.rounds < 1:
            raise ConfigError("--rounds is a number of search and fine-tuning rounds (>= 1)")
        if self.rounds == 1:
            if self.round_epochs is not None:
                raise ConfigError("--round-epochs sets the fine-tuning between rounds; it needs --rounds 2 or more")
            return
        if methods != ("ps",):
            raise ConfigError(
                f"--rounds {self.rounds} prunes each round's fine-tuned model further, which only channel pruning "
                f"does; give --methods ps, or --rounds 1 for --methods {','.join(self.methods)}"
            )
        if not self.train_data or self.finetune_epochs < 1:
            raise ConfigError(
                f"--rounds {self.rounds} fine-tunes after every round: give --train-data TRAIN and --finetune-epochs E "
                "(the last round's epochs; the others train --round-epochs)"
            )
        if self.round_epochs is None:
            object.__setattr__(self, "round_epochs", max(1, self.finetune_epochs // self.rounds))
        elif self.round_epochs < 1:
            raise ConfigError("--round-epochs must be >= 1 (every round is fine-tuned before the next one searches)")

    def _check_budgets(self) -> None:
        """--budgets: fractions in (0, 1], distinct to two decimals (their folder names), normalised to largest
        first; a family needs one search iteration per budget, one round, and exact accuracies below the
        threshold, so early rejection is resolved to off (a confidence given explicitly is refused)."""
        if self.budgets is None:
            if self.family_finetune is not None:
                raise ConfigError("--family-finetune says how a --budgets family is fine-tuned; it needs --budgets")
            return
        budgets = tuple(float(b) for b in self.budgets)
        if not budgets:
            raise ConfigError("--budgets needs at least one budget, a fraction of the baseline's cost (e.g. 0.8 0.6 0.4)")
        bad = [b for b in budgets if not 0 < b <= 1]
        if bad:
            raise ConfigError(f"--budgets {bad[0]:g}: a budget is a fraction of the baseline's cost, in (0, 1]")
        names = [f"{b:.2f}" for b in budgets]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"--budgets must be distinct to two decimals (each names a folder OUT/budgets/<B>); "
                              f"{repeated[0]} is given more than once")
        if self.rounds > 1:
            raise ConfigError(f"--budgets searches one family of models in one round; give --rounds 1 (not "
                              f"{self.rounds}), or run --rounds without --budgets")
        if self.iterations < len(budgets):
            raise ConfigError(f"--budgets splits --iterations among the budgets, one at least each: give --iterations "
                              f">= {len(budgets)} (now {self.iterations})")
        if self.early_rejection not in ("exact", "off"):
            raise ConfigError(f"--early-rejection {self.early_rejection} stops candidates below the accuracy threshold, "
                              "but --budgets chooses members there too and needs their exact accuracy; leave it out "
                              "or give --early-rejection off")
        object.__setattr__(self, "budgets", tuple(sorted(budgets, reverse=True)))
        object.__setattr__(self, "early_rejection", "off")
        self._check_family_finetune()

    def _check_family_finetune(self) -> None:
        """--family-finetune (with --budgets only), resolved to joint; joint fine-tuning slices every member's
        weights out of the largest member's, which only channel pruning keeps possible."""
        if self.family_finetune is None:
            object.__setattr__(self, "family_finetune", "joint")
        if self.family_finetune not in ("joint", "separate"):
            raise ConfigError(f"--family-finetune {self.family_finetune}: give joint or separate")
        if self.family_finetune != "joint" or not self.finetune_epochs:
            return
        if self.canonical_methods != ("ps",):
            raise ConfigError(
                f"--family-finetune joint trains one set of weights that every member slices, which only channel "
                f"pruning keeps possible; give --methods ps, or --family-finetune separate for --methods {','.join(self.methods)}")
        if self.finetune_baseline:
            raise ConfigError("--finetune-baseline is not built for --family-finetune joint; leave it out, or give "
                              "--family-finetune separate (which fine-tunes the baseline beside every member)")

    def epochs_of_round(self, k: int) -> int:
        """Fine-tuning epochs after round k (1-based) of --rounds: --round-epochs, the last round --finetune-epochs."""
        return self.finetune_epochs if k >= self.rounds else int(self.round_epochs)

    @property
    def canonical_methods(self) -> tuple[str, ...]:
        """`methods` expanded, in canonical order: ('d', 'ps') -> ('ps', 'svd', 'tucker')."""
        from adans_toolchain.plan.sites import parse_methods  # imports ONNX: not needed to build a parser

        return parse_methods(self.methods)

    def resume_key(self) -> dict:
        """The settings recorded in OUT/config.json; a resume compares all but RESUMABLE_SETTINGS.

        A setting that is resumable only under a condition (see `setting`) is left out of the
        record while the condition holds, so neither run's record holds it.
        """
        record = {}
        for f in fields(self):
            mark = f.metadata.get("resumable", False)
            if callable(mark) and mark(self):
                continue
            value = getattr(self, f.name)
            record[f.name] = list(value) if isinstance(value, tuple) else value
        return record


def cli_settings() -> tuple[Field, ...]:
    """The fields that are command-line settings, in declaration order."""
    return tuple(f for f in fields(CompileConfig) if "help" in f.metadata)


# Settings a resumed run may change without changing what was already computed.
RESUMABLE_SETTINGS = frozenset(f.name for f in fields(CompileConfig) if f.metadata.get("resumable") is True)
