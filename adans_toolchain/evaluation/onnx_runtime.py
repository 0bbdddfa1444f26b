"""Accuracy of candidate Plans by substituting initializers of an ONNX model in ONNX Runtime.

The counterpart of evaluation.SubstitutionEvaluator for models given as
`.onnx` files, with the same interface and the same semantics: a Plan's
values come from the same PlanTransform (`new_values`, then `zero_slices`),
so a candidate computes exactly what it computes on the PyTorch path.

One session serves every candidate. Every initializer a Plan can change
(the weights of weighted layers, the consumer weights that zero slices
reach, the BatchNorm statistics) is also listed as a graph input; ONNX
Runtime then treats it as a default that a feed may override, so a
candidate is evaluated by feeding only the tensors it modifies.

Channel priority: ONNX Runtime computes no gradients, so the Taylor
criterion is replaced by the producers' L1 weight norms (recorded in
`notes`).

BatchNorm re-estimation (`calibration` images) is exact, not approximated:
a calibration copy of the graph replaces every BatchNormalization by its
training-mode computation (normalise with the batch's own mean and biased
variance) and exposes each per-channel batch mean and biased variance as
outputs. Over equal-size batches (`tensor_split`, as the PyTorch path
splits them), the new running mean is the mean of the batch means and the
new running variance the mean of the unbiased batch variances
(biased * n / (n - 1)), which is what PyTorch's BatchNorm with momentum=None
accumulates.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from adans_toolchain.analysis.channels import CONSUMER, ChannelAnalysis, ChannelGroup
from adans_toolchain.analysis.graph import attributes
from adans_toolchain.evaluation.base import Evaluator
from adans_toolchain.frontend.data import ImageSet
from adans_toolchain.plan import Plan
from adans_toolchain.runtime.sessions import make_session
from adans_toolchain.transforms.channel_pruning import unit_l1_norms
from adans_toolchain.transforms.plan_transform import PlanTransform


class OnnxEvaluator(Evaluator):
    def __init__(
        self,
        model,
        data: ImageSet,
        transform: PlanTransform,
        *,
        device: str = "cpu",
        batch_size: int = 250,
        calibration: ImageSet | None = None,
        threads: int | None = None,
    ) -> None:
        """`model`: the ONNX model the analysis was made on (a ModelProto, or frontend's OnnxModel)."""
        super().__init__(transform, batch_size=batch_size)
        self.model: onnx.ModelProto = getattr(model, "model", model)
        self.threads = threads or torch.get_num_threads()
        graph = transform.analysis.graph
        self.params: dict[str, np.ndarray] = graph.initializers
        self.x = np.ascontiguousarray(data.x.detach().cpu().numpy(), dtype=np.float32)
        self.y = data.y.detach().cpu().numpy()
        self.calibration = None if calibration is None else np.ascontiguousarray(calibration.x.detach().cpu().numpy(), dtype=np.float32)
        self.providers = self._providers(device)
        self.batchnorms = self._batchnorm_nodes()
        if self.calibration is not None and not self.batchnorms:
            self.notes.append(
                "BatchNorm re-estimation requested, but the ONNX model has no BatchNormalization nodes with stored "
                "statistics (folded into the convolutions at export?): nothing to re-estimate"
            )
        # Initializers a Plan may change: weighted layers (decomposition, sparsity),
        # consumer weights (channel pruning), BatchNorm statistics (re-estimation).
        self.substitutable = set(transform.layers) | {b.param for b in transform.analysis.bindings if b.role == CONSUMER}
        for bn in self.batchnorms:
            self.substitutable.update((bn["mean"], bn["var"]))
        self.substitutable &= set(self.params)
        self.session = self._session(_with_overridable(self.model, self.substitutable))
        self.input_name = self.session.get_inputs()[0].name
        self._calibration_session = None
        self._stats_cache: tuple[str, dict[str, np.ndarray]] | None = None
        # The initializers fed for the plan being evaluated (inside `substituted`).
        self._active: dict[str, np.ndarray] = {}

    # -- sessions ------------------------------------------------------------
    def _providers(self, device: str) -> list[str]:
        import onnxruntime as ort

        if device.startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                return ["CUDAExecutionProvider", "CPUExecutionProvider"]
            self.notes.append(f"--device {device}: this ONNX Runtime has no CUDA provider; ONNX candidates ran on CPU")
        return ["CPUExecutionProvider"]

    def _session(self, model: onnx.ModelProto):
        return make_session(model, self.threads, tuple(self.providers))

    # -- substitution ----------------------------------------------------------
    def _values(self, plan: Plan) -> dict[str, np.ndarray]:
        """The initializers `plan` changes, by name: new values first, then zero slices (PlanTransform order)."""
        values: dict[str, np.ndarray] = {}
        for name, value in self.transform.new_values(plan).items():
            # Copies: the transform caches reconstructions, and zero slices write below.
            values[name] = np.array(value, dtype=self.params[name].dtype, copy=True)
        for zs in self.transform.zero_slices(plan):
            if zs.param not in values:
                values[zs.param] = self.params[zs.param].copy()
            index = [slice(None)] * values[zs.param].ndim
            index[zs.axis] = np.asarray(zs.indices, dtype=np.int64)
            values[zs.param][tuple(index)] = 0
        unknown = set(values) - self.substitutable
        if unknown:
            raise RuntimeError(f"the plan changes initializers the ONNX evaluator cannot override: {sorted(unknown)[:3]}")
        return values

    def _feeds(self, plan: Plan, recalibrate: bool | None = None) -> dict[str, np.ndarray]:
        recalibrate = self._recalibrating(plan, recalibrate)
        values = self._values(plan)
        if recalibrate and self.calibration is not None:
            values.update(self._reestimate(plan, values))
        return values

    @contextmanager
    def substituted(self, plan: Plan, *, recalibrate: bool | None = None) -> Iterator[None]:
        """Runs inside the block feed `plan`'s initializers; the session itself is never changed."""
        self._active = self._feeds(plan, recalibrate)
        try:
            yield
        finally:
            self._active = {}

    def _batches(self, x: np.ndarray) -> Iterator[np.ndarray]:
        """Logits of `x` batch by batch, with the active plan's feeds."""
        for start in range(0, len(x), self.batch_size):
            feed = {self.input_name: x[start : start + self.batch_size], **self._active}
            yield np.asarray(self.session.run(None, feed)[0])

    def _correct(self, x: np.ndarray, y: np.ndarray) -> int:
        correct = 0
        for start, logits in zip(range(0, len(y), self.batch_size), self._batches(x)):
            correct += int((logits.argmax(axis=1) == y[start : start + self.batch_size]).sum())
        return correct

    def _arrays(self, data: ImageSet) -> tuple[np.ndarray, np.ndarray]:
        return np.ascontiguousarray(data.x.detach().cpu().numpy(), dtype=np.float32), data.y.detach().cpu().numpy()

    # -- the rest of the Evaluator contract ----------------------------------------
    def logits(self, plan: Plan, x: torch.Tensor) -> np.ndarray:
        x_np = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
        with self.substituted(plan):
            parts = list(self._batches(x_np))
        return (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)).astype(np.float32, copy=False)

    def float64_logits(self, plan: Plan, x: torch.Tensor) -> np.ndarray | None:
        """The substituted graph run in float64 by ONNX's reference evaluator; None where that cannot run it."""
        from adans_toolchain.runtime.reference import run_float64

        x_np = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        values = self._feeds(plan)
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for init in model.graph.initializer:
            if init.name in values:
                init.CopyFrom(numpy_helper.from_array(np.asarray(values[init.name], numpy_helper.to_array(init).dtype), init.name))
        try:
            return run_float64(model, x_np)
        except Exception:  # noqa: BLE001 - an operator the reference evaluator lacks or gets wrong: no float64 reference
            return None

    def batchnorm_statistics(self, plan: Plan) -> dict[str, np.ndarray]:
        """The running statistics the emitted model must carry for `plan`, by initializer name."""
        if not self.recalibrates(plan):
            return {}
        return {k: v.copy() for k, v in self._reestimate(plan, self._values(plan)).items()}

    def priorities(self, analysis: ChannelAnalysis, groups: Sequence[ChannelGroup], method: str = "taylor") -> dict[str, np.ndarray]:
        if method not in ("taylor", "l1"):
            raise ValueError(f"unknown priority method '{method}' (taylor or l1)")
        if method == "taylor":
            self.notes.append(
                "channel priority: L1 weight norm of the producers (the model is an ONNX file and ONNX Runtime "
                "computes no gradients, so the first-order Taylor criterion is not available)"
            )
        return {g.id: unit_l1_norms(analysis, g, self.params) for g in groups}

    # -- BatchNorm re-estimation -------------------------------------------------
    def _batchnorm_nodes(self) -> list[dict]:
        graph = self.transform.analysis.graph
        found, readers = [], {}
        for node in graph.nodes:
            for name in node.input:
                readers[name] = readers.get(name, 0) + 1
        for node in graph.nodes:
            if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
                continue
            x = node.input[0]
            if x not in graph.activations or len(node.input) < 5 or any(p not in graph.initializers for p in node.input[1:5]):
                continue
            if attributes(node).get("training_mode", 0):
                continue
            shape = graph.shapes.get(x)
            if shape is None or len(shape) < 2:
                continue
            found.append({"node": node.name, "x": x, "scale": node.input[1], "bias": node.input[2],
                          "mean": node.input[3], "var": node.input[4], "rank": len(shape),
                          "epsilon": float(attributes(node).get("epsilon", 1e-5)), "spatial": int(np.prod(shape[2:]))})
        shared = [bn for bn in found if readers.get(bn["mean"], 0) > 1 or readers.get(bn["var"], 0) > 1]
        if shared and self.calibration is not None:
            self.notes.append(
                f"BatchNorm re-estimation is off: statistics of '{shared[0]['node']}' are shared with another node, "
                "so they cannot take per-layer values"
            )
            return []
        return found

    def _reestimate(self, plan: Plan, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = plan.to_json()
        if self._stats_cache is not None and self._stats_cache[0] == key:
            return self._stats_cache[1]
        if self._calibration_session is None:
            self._calibration_session = self._session(_calibration_model(self.model, self.batchnorms, self.substitutable))
        session = self._calibration_session
        names = [o.name for o in session.get_outputs()][1:]
        sums = {name: None for name in names}
        # Equal-size batches, as the PyTorch path: each batch weighs the same.
        n_batches = -(-len(self.calibration) // self.batch_size)
        batches = np.array_split(self.calibration, n_batches)
        feeds = {k: v for k, v in values.items() if k not in {bn["mean"] for bn in self.batchnorms} | {bn["var"] for bn in self.batchnorms}}
        for batch in batches:
            outputs = session.run(names, {self.input_name: batch, **feeds})
            for k, (name, value) in enumerate(zip(names, outputs)):
                value = np.asarray(value, dtype=np.float64).reshape(-1)
                if k % 2 == 1:  # biased variance -> unbiased, as BatchNorm's running_var
                    n = len(batch) * self.batchnorms[k // 2]["spatial"]
                    value = value * n / max(n - 1, 1)
                sums[name] = value if sums[name] is None else sums[name] + value
        stats = {}
        for k, bn in enumerate(self.batchnorms):
            for j, stat in enumerate(("mean", "var")):
                average = sums[names[2 * k + j]] / len(batches)
                stats[bn[stat]] = average.astype(self.params[bn[stat]].dtype)
        self._stats_cache = (key, stats)
        return stats


def _with_overridable(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy of `model` whose initializers `names` are also graph inputs (feeds may override them)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    listed = {i.name for i in out.graph.input}
    for init in out.graph.initializer:
        if init.name in names and init.name not in listed:
            out.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    if out.ir_version < 4:
        out.ir_version = 4  # initializers need not be inputs from IR 4 on; earlier ones are read-only
    return out


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def _calibration_model(model: onnx.ModelProto, batchnorms: list[dict], overridable: set[str]) -> onnx.ModelProto:
    """`model` with every BatchNormalization in training mode, its batch mean and biased variance as outputs.

    y = (x - mean_b) / sqrt(var_b + eps) * scale + bias, with mean_b and
    var_b over the batch and spatial axes; outputs are [logits, mean_0,
    var_0, mean_1, var_1, ...] in the order of `batchnorms`.
    """
    out = _with_overridable(model, overridable - {s for bn in batchnorms for s in (bn["mean"], bn["var"])})
    graph = out.graph
    initializers = {i.name: i for i in graph.initializer}
    axes_as_input = _opset(out) >= 18
    by_node = {bn["node"]: bn for bn in batchnorms}
    new_nodes, new_inits, stat_outputs = [], [], []
    for node in graph.node:
        bn = by_node.get(node.name)
        if bn is None:
            new_nodes.append(node)
            continue
        x, y, rank, tag = bn["x"], node.output[0], bn["rank"], f"{node.name}__calib"
        axes = [0, *range(2, rank)]
        per_channel = [1, -1] + [1] * (rank - 2)
        for name in ("scale", "bias"):
            value = numpy_helper.to_array(initializers[bn[name]]).astype(np.float32).reshape(per_channel)
            new_inits.append(numpy_helper.from_array(value, f"{tag}_{name}"))
        new_inits.append(numpy_helper.from_array(np.array(bn["epsilon"], dtype=np.float32), f"{tag}_eps"))

        def reduce_mean(src: str, dst: str) -> onnx.NodeProto:
            if axes_as_input:
                return helper.make_node("ReduceMean", [src, f"{tag}_axes"], [dst], keepdims=1, name=f"{tag}/{dst}")
            return helper.make_node("ReduceMean", [src], [dst], axes=axes, keepdims=1, name=f"{tag}/{dst}")

        if axes_as_input:
            new_inits.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), f"{tag}_axes"))
        mean, centred, square, var = f"{tag}_mean", f"{tag}_centred", f"{tag}_sq", f"{tag}_var"
        new_nodes += [
            reduce_mean(x, mean),
            helper.make_node("Sub", [x, mean], [centred], name=f"{tag}/sub"),
            helper.make_node("Mul", [centred, centred], [square], name=f"{tag}/square"),
            reduce_mean(square, var),
            helper.make_node("Add", [var, f"{tag}_eps"], [f"{tag}_var_eps"], name=f"{tag}/add_eps"),
            helper.make_node("Sqrt", [f"{tag}_var_eps"], [f"{tag}_std"], name=f"{tag}/sqrt"),
            helper.make_node("Div", [centred, f"{tag}_std"], [f"{tag}_normalised"], name=f"{tag}/div"),
            helper.make_node("Mul", [f"{tag}_normalised", f"{tag}_scale"], [f"{tag}_scaled"], name=f"{tag}/scale"),
            helper.make_node("Add", [f"{tag}_scaled", f"{tag}_bias"], [y], name=f"{tag}/bias"),
        ]
        stat_outputs += [mean, var]
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    del graph.value_info[:]
    for name in stat_outputs:
        graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out
