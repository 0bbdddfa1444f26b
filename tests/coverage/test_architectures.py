"""Architecture coverage: every listed architecture compiles end to end through the CLI.

Random weights (BatchNorm statistics randomised so slicing bugs cannot
hide behind identity BatchNorms), random images, a tiny search budget, a
10-point accuracy allowance and BatchNorm re-estimated on 4 images. Random
weights have no accuracy to keep, so the images are labelled with classes
the model does not predict (`write_images_the_model_gets_wrong`): the
baseline scores 0 %, the allowance admits every plan, and the search goes
down to about one unit per group. Those extreme plans, with statistics
re-estimated on a few small images, are where lowering and validation are
hardest (issue 16: DenseNet-121's failed validation). The pipeline validates
the lowered model against the substituted one on every compile; here we also
re-run the emitted ONNX file on the VAL images and require the report's
top-1, at least 10 % of the MACs removed, no traceback, and that nothing but
the model's input and output (and groups the analysis cannot prune exactly,
each with its reason) is frozen. tools/coverage_table.py runs the same
architectures at full size, with real weights where we have them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from adans_toolchain.frontend.data import Preprocessing
from adans_toolchain.frontend.loading import build_architecture
from tests.conftest import randomise_batchnorm
from tests.coverage.harness import ARCHITECTURE_RUN, compile_and_check, write_images_the_model_gets_wrong


@dataclass(frozen=True)
class Case:
    arch: str
    size: int  # smallest input that keeps the test fast and the model exportable
    methods: str = "ps"
    images: int = 4
    extra: tuple[str, ...] = field(default=())
    prep: Preprocessing = Preprocessing()
    # Frozen groups allowed besides the model input and output (reason prefix or fragment).
    also_frozen: tuple[str, ...] = ()


TF_PREP = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), label_offset=1)
TF = ("--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--label-offset", "1")
# ShuffleNet's concat-and-shuffle streams leave some groups with one unit (all of it or nothing): frozen, not searched.
SINGLE_UNIT = "a single unit"
# ConvNeXt's residual streams are normalised over their channels (LayerNorm): not prunable exactly; its MLPs are.
LAYER_NORM_OVER_CHANNELS = "statistics span the channel axis"
CASES = [
    Case("cifar_resnet20", 32, "d,ps"),
    # 32 pixels is enough for the ImageNet models with a global pool: their
    # structure (and so what the analysis and lowering meet) does not depend
    # on the input size, and every evaluation is 4x cheaper than at 64.
    Case("torchvision:resnet18", 32),
    Case("torchvision:resnet50", 32),
    Case("torchvision:mobilenet_v2", 32),
    Case("torchvision:mobilenet_v3_small", 32),
    Case("torchvision:googlenet", 32),
    # Their adaptive average pools export to ONNX only when 7 divides the
    # feature map, i.e. from 224 pixels up; the 4096-wide classifier layers
    # are narrowed for CI (see synthetic.py), the full models are in the
    # README's coverage table.
    Case("tests.coverage.synthetic:alexnet_slim", 224, images=2),
    Case("tests.coverage.synthetic:vgg11_bn_slim", 224, images=2),
    Case("tf_mobilenet_v1_0.5_160", 64, "d,ps", extra=TF, prep=TF_PREP),
    # Issue 16: grouped convolutions (equal counts per conv group), dense concatenation, channel shuffle and
    # chunk, squeeze-excitation, channels-last MLPs. DenseNet-121 at 32 pixels: its last block sees one value
    # per image and channel, so its re-estimated statistics make the extreme plans ill-conditioned in float32
    # (validation measures that; see lowering/validate.py).
    Case("torchvision:resnext50_32x4d", 32),
    Case("torchvision:regnet_y_400mf", 32),
    Case("torchvision:densenet121", 32),
    Case("torchvision:shufflenet_v2_x1_0", 32, also_frozen=(SINGLE_UNIT,)),
    Case("torchvision:efficientnet_b0", 32),
    Case("torchvision:mnasnet1_0", 32),
    Case("torchvision:mobilenet_v3_large", 32),
    Case("torchvision:convnext_tiny", 32, also_frozen=(LAYER_NORM_OVER_CHANNELS,)),
]


def _id(case: Case) -> str:
    return case.arch.split(":")[-1]


def _weights_and_data(case: Case, tmp_path):
    torch.manual_seed(0)
    module = randomise_batchnorm(build_architecture(case.arch), seed=1)
    weights = tmp_path / "weights.pt"
    torch.save(module.state_dict(), weights)
    data = write_images_the_model_gets_wrong(tmp_path / "val.npz", module, case.images, case.size, case.prep)
    return weights, data


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_architecture_compiles_validates_and_reports(case, tmp_path, capfd):
    weights, data = _weights_and_data(case, tmp_path)
    report = compile_and_check(
        [weights, "--arch", case.arch, "--data", data, "--methods", case.methods, *ARCHITECTURE_RUN, *case.extra], tmp_path / "out"
    )
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert report["baseline"]["top1_val"] == 0.0  # the allowance cannot bind (module docstring)
    # Nothing but the image input and the logits is frozen (and what the case names, each with its reason).
    reasons = sorted(g["reason"] for g in report["frozen_groups"])
    reasons = [r for r in reasons if not any(a in r for a in case.also_frozen)]
    assert len(reasons) == 2 and "is a model input" in reasons[0] and "is a model output" in reasons[1], reasons
    # The tiny search removed at least 10 % of the MACs, and lowering removed them.
    assert report["compressed"]["macs"] <= 0.9 * report["baseline"]["macs"]
    assert any(g["kept"] < g["channels"] for g in report["groups"] if g["prunable"])
    if "d" in case.methods.split(","):
        assert "svd" in report["search"]["methods"] or "tucker" in report["search"]["methods"]


def test_a_planted_lowering_bug_fails_the_compile_in_one_line(tmp_path, capfd, monkeypatch):
    """Kept channels off by one in every pruned tensor of DenseNet's extreme plan: refused as a lowering bug.

    (test_validation_conditioning.py plants the same bug on a plan the plain tolerance refuses.)
    """
    import numpy as np

    import adans_toolchain.lowering.prune_channels as prune_channels
    from adans_toolchain.cli.compile import main

    case = next(c for c in CASES if c.arch == "torchvision:densenet121")
    weights, data = _weights_and_data(case, tmp_path)
    correct = prune_channels.kept_channels

    def off_by_one(analysis, plan, only=None):
        kept = correct(analysis, plan, only)
        return {t: np.unique((k + 1) % analysis.channel_tensors[t]) for t, k in kept.items()}

    monkeypatch.setattr(prune_channels, "kept_channels", off_by_one)
    code = main([str(weights), "--arch", case.arch, "--data", str(data), *ARCHITECTURE_RUN, "-o", str(tmp_path / "out")])
    out, err = capfd.readouterr()
    assert code != 0 and "Traceback" not in out + err
    assert "this is a lowering bug" in err, err
