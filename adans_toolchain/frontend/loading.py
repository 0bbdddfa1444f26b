"""Load a user's model: checkpoint + architecture, TorchScript, a pickled module, or an ONNX file.

Unpickling runs arbitrary code, so checkpoints are read with
`weights_only=True`; a whole pickled module is only loaded when the user says
`--trust-pickle`. ONNX files are checked with `onnx.checker` before use
(see onnx_model.py).
"""

from __future__ import annotations

import importlib
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from adans_toolchain.errors import ModelLoadError

_CIFAR_DEPTHS = (20, 32, 44, 56, 110)


# torchvision classifiers whose auxiliary heads only run in training: built
# without them (and without the slow scipy initialisation), and their weights
# are dropped from a checkpoint that still has them.
_AUX_HEADS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


def builtin_arch_names() -> list[str]:
    from adans_toolchain.frontend.architectures.tf_mobilenet_v1 import TF_MOBILENET_V1

    return [f"cifar_resnet{d}" for d in _CIFAR_DEPTHS] + list(TF_MOBILENET_V1)


def build_architecture(arch: str) -> nn.Module:
    """An untrained module for `--arch`: built-in, `torchvision:NAME`, or `package.module:callable`."""
    if arch.startswith("cifar_resnet"):
        from adans_toolchain.frontend.architectures.cifar_resnet import cifar_resnet

        depth = arch.removeprefix("cifar_resnet")
        if not depth.isdigit() or int(depth) not in _CIFAR_DEPTHS:
            raise ModelLoadError(
                f"unknown built-in architecture '{arch}'; built-ins: {', '.join(builtin_arch_names())}"
            )
        return cifar_resnet(int(depth))
    if arch.startswith("tf_mobilenet_v1"):
        from adans_toolchain.frontend.architectures.tf_mobilenet_v1 import TF_MOBILENET_V1, tf_mobilenet_v1

        if arch not in TF_MOBILENET_V1:
            raise ModelLoadError(
                f"unknown built-in architecture '{arch}'; built-ins: {', '.join(builtin_arch_names())}"
            )
        return tf_mobilenet_v1(arch)
    if arch.startswith("torchvision:"):
        import torchvision

        name = arch.split(":", 1)[1]
        extra = {"aux_logits": False, "init_weights": False} if name in _AUX_HEADS else {}
        try:
            return torchvision.models.get_model(name, weights=None, **extra)
        except ValueError as e:
            raise ModelLoadError(
                f"torchvision has no model '{name}'; see torchvision.models.list_models()"
            ) from e
    if ":" in arch:
        module_name, attr = arch.split(":", 1)
        try:
            factory: Callable[[], nn.Module] = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ModelLoadError(
                f"cannot import '{arch}' ({e}); give --arch as package.module:callable importable from here"
            ) from e
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001 - the user's code may raise anything
            raise ModelLoadError(
                f"--arch {arch} raised {type(e).__name__} when called: {_first_line(e)}; "
                "fix the callable (rerun with --debug for the traceback)"
            ) from e
        if not isinstance(model, nn.Module):
            raise ModelLoadError(f"'{arch}' returned {type(model).__name__}, not a torch.nn.Module")
        return model
    if _is_torchvision_model(arch):
        raise ModelLoadError(f"unknown architecture '{arch}'; for torchvision's model of that name say --arch torchvision:{arch}")
    raise ModelLoadError(
        f"unknown architecture '{arch}'; use one of {', '.join(builtin_arch_names())}, "
        "torchvision:NAME, or package.module:callable"
    )


def _is_torchvision_model(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models()


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module
    source: str  # "state_dict", "torchscript", "pickle", "onnx"
    description: str
    onnx_model: object = None  # onnx.ModelProto, normalised (source "onnx" only)
    input_size: tuple[int, int] | None = None  # (H, W) the architecture is built for, when it says (built-ins)


def builtin_input_size(arch: str) -> tuple[int, int] | None:
    """The image size a built-in architecture is made for: 32x32 CIFAR ResNets, tf_mobilenet_v1_<width>_<size>."""
    if arch.startswith("cifar_resnet"):
        return (32, 32)
    if arch.startswith("tf_mobilenet_v1") and arch.rpartition("_")[2].isdigit():
        size = int(arch.rpartition("_")[2])
        return (size, size)
    return None


# How model files start: a zip archive (torch.save since PyTorch 1.6, TorchScript), or a pickle
# (protocol 2 and later, the legacy torch.save format). Anything else is none of them.
_ZIP_MAGIC = b"PK"
_PICKLE_MAGIC = b"\x80"


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(2)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_PICKLE_MAGIC):
        return "pickle"
    return "unknown"


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives are zip files holding a code/ folder (or constants.pkl).
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("constants.pkl") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


# torch.save(model.state_dict()) keeps each submodule's state_dict format
# version in `_metadata` on the OrderedDict (keyed by module path, "" for the
# root), and some modules refuse weights without it (torchvision's MNASNet:
# "version should be set to 1 or 2"). Every dict built here from a checkpoint
# carries it along.
def _metadata(state: object) -> dict | None:
    return getattr(state, "_metadata", None)


def _with_metadata(tensors: dict[str, torch.Tensor], metadata: dict | None) -> dict[str, torch.Tensor]:
    out = OrderedDict(tensors)
    if metadata is not None:
        out._metadata = OrderedDict(metadata)  # type: ignore[attr-defined] - how PyTorch stores it
    return out


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys and metadata without `prefix.`: the wrapped module becomes the root, the wrapper's own entry goes."""
    tensors = {k.removeprefix(prefix + "."): v for k, v in state.items()}
    metadata = _metadata(state)
    if metadata is None:
        return _with_metadata(tensors, None)
    inner = {
        "" if name == prefix else name.removeprefix(prefix + "."): value
        for name, value in metadata.items()
        if name == prefix or name.startswith(prefix + ".")
    }
    return _with_metadata(tensors, inner)


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        tensors = _with_metadata({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, _metadata(obj))
        if tensors:
            # DataParallel checkpoints prefix every key with "module.".
            if all(k.startswith("module.") for k in tensors):
                tensors = _strip_prefix(tensors, "module")
            return tensors
    raise ModelLoadError(f"{path} holds no state_dict (a dict of tensors, or a checkpoint with 'state_dict')")


def load_model(path: str | Path, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file {path} is empty")
    if path.suffix.lower() == ".onnx":
        from adans_toolchain.frontend.onnx_model import load_onnx_model

        if arch is not None:
            raise ModelLoadError(f"{path.name} is an ONNX model, which carries its own architecture; drop --arch")
        return load_onnx_model(path)
    kind = _sniff(path)
    if kind == "unknown":
        raise ModelLoadError(
            f"{path} is not a PyTorch checkpoint (a zip archive or a pickle), a TorchScript archive or an ONNX model "
            "(.onnx); check that it is the right file and complete"
        )
    if kind == "zip" and not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} starts like a zip archive (a PyTorch checkpoint) but is damaged or cut short; is the file complete?")
    if kind == "zip" and _is_torchscript(path):
        if arch is not None:
            raise ModelLoadError(f"{path.name} is a TorchScript archive, which carries its own architecture; drop --arch")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - torch raises many types here
            raise ModelLoadError(f"{path} looks like TorchScript but does not load: {e}") from e
        return LoadedModel(module.eval(), "torchscript", f"TorchScript archive {path.name}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        if not trust_pickle:
            # Only a file that unpickles (it names Python globals) is a pickled object; a damaged one is not.
            if "weights_only" in str(e) and "Unsupported global" in str(e):
                raise ModelLoadError(
                    f"{path} is a pickled Python object, not a plain checkpoint; loading it runs code from the "
                    "file, so pass --trust-pickle only if you trust its source (or save a state_dict and use --arch)"
                ) from e
            raise ModelLoadError(f"cannot read {path} as a PyTorch checkpoint ({_unpickler_detail(e)}); is the file complete?") from e
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001
            raise ModelLoadError(f"cannot unpickle {path}: {_first_line(e2)}") from e2
    if isinstance(obj, nn.Module):
        if arch is not None:
            raise ModelLoadError(f"{path.name} holds a whole pickled module, which carries its own architecture; drop --arch")
        return LoadedModel(obj.eval(), "pickle", f"pickled module {type(obj).__name__}")
    if arch is None:
        raise ModelLoadError(
            f"{path} is a state_dict; say which architecture it belongs to with --arch "
            f"(built-ins: {', '.join(builtin_arch_names())}, torchvision:NAME, or package.module:callable)"
        )
    state = _extract_state_dict(obj, path)
    module = build_architecture(arch)
    state = _drop_unused_aux_heads(arch, module, state)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        missing, unexpected = _key_mismatch(module, state)
        detail = "; ".join(filter(None, [missing, unexpected])) or _first_line(e)
        raise ModelLoadError(f"the weights in {path.name} do not fit --arch {arch}: {detail}") from e
    except Exception as e:  # noqa: BLE001 - a module's own _load_from_state_dict may raise anything
        raise ModelLoadError(
            f"the weights in {path.name} do not load into --arch {arch} ({type(e).__name__}: {_first_line(e)}); "
            "if the checkpoint was rebuilt as a plain dict, save model.state_dict() itself, which keeps each "
            "layer's format version (rerun with --debug for the traceback)"
        ) from e
    return LoadedModel(module.eval(), "state_dict", f"{arch} with weights from {path.name}", input_size=builtin_input_size(arch))


def _drop_unused_aux_heads(arch: str, module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of training-only auxiliary classifiers (GoogLeNet, Inception v3) that the module was built without."""
    prefixes = _AUX_HEADS.get(arch.removeprefix("torchvision:")) if arch.startswith("torchvision:") else None
    if not prefixes:
        return state
    expected = module.state_dict()
    return _with_metadata({k: v for k, v in state.items() if k in expected or not k.startswith(prefixes)}, _metadata(state))


def _key_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> tuple[str, str]:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shape:
        k = shape[0]
        parts.append(
            f"{len(shape)} tensors of another shape (e.g. {k}: file {tuple(state[k].shape)}, arch {tuple(expected[k].shape)})"
        )
    return ", ".join(parts[:2]), ", ".join(parts[2:])


def _unpickler_detail(e: BaseException) -> str:
    """What torch's weights-only unpickler objected to, without its advice to turn weights_only off."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        detail = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()]
        if detail:
            return f"not a valid checkpoint: {detail[0]}"
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
