"""Timing single-kernel graphs in ONNX Runtime.

Two methods, recorded in the table header:

- "node-profile" (CPU execution providers): ONNX Runtime's own profiler
  times every node of the optimised graph. A kernel's time is the sum of
  its nodes, leaving out the layout reorders at the graph's boundary (those
  are recorded separately: inside a model they happen only where layouts
  really change) and the profiler's helper nodes. This isolates the kernel
  from the Python call and the input/output copies, which a model pays once
  per run, not once per kernel (measured separately, see profiler.py).
- "wall" (GPU providers, where node events only time the launch): the
  wall-clock time of `session.run` of one single-kernel graph.

Packing: creating an ONNX Runtime session costs more than timing a small
kernel, so for "node-profile" up to `pack` single-kernel graphs become
disconnected branches of one graph (names prefixed per branch); one session
times them all, each run executing every branch once. Nodes are attributed
to their branch by following the optimised graph from the branch's inputs.
A side effect worth having: a kernel no longer finds its weights in cache
from its own previous run, as it would not inside a model either.

Machines are noisy (other work shares the cores), so packs are timed in
interleaved rounds, and each kernel's minimum over all runs is kept: the run
least disturbed by anything else. The median is recorded as well.

ONNX Runtime's profiler reports whole microseconds, truncated; half a
microsecond is added to every node's duration to make the truncation
unbiased.

int8 (QDQ) graphs: the boundary with float is the QuantizeLinear of the
data input and the DequantizeLinear of the output, with the Transposes
ONNX Runtime adds next to them to run its integer convolutions
channels-last; they are timed as the graph's input and output conversions
(`in_reorder_ms`, `out_reorder_ms`), like a float kernel's layout reorders,
since inside a chain of int8 layers the runtime runs none of them. The
residual's QuantizeLinear and any Transpose between the kernel's own nodes
(the runtime keeps int8 tensors channels-last between int8 layers) are left
out of the timing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from adans_toolchain.runtime.sessions import session_options
from cost_models.lut import QUANTIZED

from adans_toolchain.profiling.graphs import HELPER, INPUT, OUTPUT, KernelGraph

TRUNCATION_US = 0.5
NODE_PROFILE, WALL = "node-profile", "wall"


@dataclass(frozen=True)
class TimingConfig:
    method: str = NODE_PROFILE
    threads: int = 1
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    warmup: int = 2
    rounds: int = 4  # interleaved rounds over the packs of a chunk
    max_runs: int = 100  # per pack: as many runs as fit in `ms_per_pack`, within [min_runs, max_runs]
    min_runs: int = 6
    ms_per_pack: float = 200.0
    pack: int = 16  # single-kernel graphs per session (node-profile only)
    pack_bytes: int = 96 << 20  # and at most this many bytes of weights and activations
    chunk: int = 4  # packs timed in interleaved rounds at once

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class GraphTiming:
    min_ms: float
    median_ms: float
    repeats: int
    nodes: int  # kernel nodes (boundary conversions and helpers excluded)
    in_layout: str  # "blocked" when the runtime reorders the data input before the kernel; "int8" for int8 graphs
    out_layout: str  # "blocked" when the runtime reorders the output after it; "int8" for int8 graphs
    in_reorder_ms: float | None  # boundary conversion times (min), when present: reorders, or quantize for int8
    out_reorder_ms: float | None  # ... or dequantize for int8
    node_types: tuple[str, ...]


# -- packing --------------------------------------------------------------------


def _graph_bytes(g: KernelGraph) -> int:
    weights = sum(prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize for t in g.model.graph.initializer)
    return weights + 4 * (sum(prod(s) for s in g.feeds.values()) + prod(g.output_shape))


def _packs(graphs: list[KernelGraph], cfg: TimingConfig) -> list[list[int]]:
    if cfg.method == WALL:
        return [[i] for i in range(len(graphs))]
    packs: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, g in enumerate(graphs):
        b = _graph_bytes(g)
        if current and (len(current) >= cfg.pack or size + b > cfg.pack_bytes):
            packs.append(current)
            current, size = [], 0
        current.append(i)
        size += b
    if current:
        packs.append(current)
    return packs


def _prefix(i: int) -> str:
    return f"b{i}_"


def _prefixed(proto, prefix: str):
    """A copy of a named proto (initializer, graph input or output) with `prefix` before its name."""
    copy = type(proto)()
    copy.CopyFrom(proto)
    copy.name = prefix + proto.name
    return copy


def merge_graphs(graphs: list[KernelGraph]) -> onnx.ModelProto:
    """Disconnected branches in one model; every name of branch i is prefixed `b{i}_`."""
    nodes, inits, inputs, outputs = [], [], [], []
    for i, g in enumerate(graphs):
        p = _prefix(i)
        for n in g.model.graph.node:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            m.name = p + n.name
            m.input[:] = [p + x if x else x for x in n.input]
            m.output[:] = [p + x if x else x for x in n.output]
            nodes.append(m)
        inits += [_prefixed(t, p) for t in g.model.graph.initializer]
        inputs += [_prefixed(v, p) for v in g.model.graph.input]
        outputs += [_prefixed(v, p) for v in g.model.graph.output]
    model = helper.make_model(helper.make_graph(nodes, "adans_pack", inputs, outputs, inits),
                              opset_imports=list(graphs[0].model.opset_import))
    model.ir_version = graphs[0].model.ir_version
    return model


# -- running ----------------------------------------------------------------------


@dataclass
class _Open:
    members: list[int]  # indices into the caller's graph list
    session: object
    feeds: dict
    optimized: onnx.ModelProto | None
    wall_ms: list
    budget: int = 0


def _open(graphs: list[KernelGraph], members: list[int], cfg: TimingConfig, tmp: str, index: int, rng) -> _Open:
    import onnxruntime as ort

    parts = [graphs[i] for i in members]
    if cfg.method == NODE_PROFILE:
        model = merge_graphs(parts)
        feeds = {_prefix(j) + name: rng.standard_normal(shape).astype(np.float32) for j, g in enumerate(parts) for name, shape in g.feeds.items()}
        optimized_path = os.path.join(tmp, f"opt{index}.onnx")
        options = session_options(cfg.threads, profile_prefix=os.path.join(tmp, f"prof{index}"), optimized_path=optimized_path)
    else:
        model = parts[0].model
        feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in parts[0].feeds.items()}
        optimized_path = None
        options = session_options(cfg.threads)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=list(cfg.providers))
    optimized = onnx.load(optimized_path, load_external_data=False) if optimized_path else None
    return _Open(members, session, feeds, optimized, [])


def time_graphs(graphs: list[KernelGraph], cfg: TimingConfig, *, seed: int = 0) -> list[GraphTiming]:
    """Times every graph; results in the order given."""
    results: dict[int, GraphTiming] = {}
    rng = np.random.default_rng(seed)
    packs = _packs(graphs, cfg)
    with tempfile.TemporaryDirectory(prefix="adans-profile-") as tmp:
        for start in range(0, len(packs), cfg.chunk):
            opened = [_open(graphs, members, cfg, tmp, start + j, rng) for j, members in enumerate(packs[start : start + cfg.chunk])]
            _run_rounds(opened, cfg)
            for o in opened:
                for i, timing in zip(o.members, _collect(o, graphs, cfg)):
                    results[i] = timing
            del opened
    return [results[i] for i in range(len(graphs))]


def _run_rounds(opened: list[_Open], cfg: TimingConfig) -> None:
    for o in opened:
        for _ in range(cfg.warmup):
            o.session.run(None, o.feeds)
    for o in opened:  # one timed run sizes the budget
        t0 = time.perf_counter()
        o.session.run(None, o.feeds)
        ms = (time.perf_counter() - t0) * 1e3
        o.wall_ms.append(ms)
        o.budget = max(cfg.min_runs, min(cfg.max_runs, int(cfg.ms_per_pack / max(ms, 1e-3))))
    for r in range(cfg.rounds):
        for o in opened if r % 2 == 0 else opened[::-1]:
            share = -(-o.budget // cfg.rounds)
            for _ in range(share):
                if len(o.wall_ms) >= o.budget:
                    break
                t0 = time.perf_counter()
                o.session.run(None, o.feeds)
                o.wall_ms.append((time.perf_counter() - t0) * 1e3)


def profiled_and_wall(model: onnx.ModelProto, feeds: dict, cfg: TimingConfig, *, runs: int) -> tuple[float, float, int]:
    """(wall-clock min of an unprofiled session, min over runs of the summed profiled node times, node count).

    The two sessions run alternately, so both minima come from the same
    stretch of time on a shared machine; their difference is what the
    profiler adds (see profiler.measure_runtime).
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="adans-profile-") as tmp:
        plain = ort.InferenceSession(model.SerializeToString(), session_options(cfg.threads), providers=list(cfg.providers))
        profiled = ort.InferenceSession(model.SerializeToString(), session_options(cfg.threads, profile_prefix=os.path.join(tmp, "p")),
                                        providers=list(cfg.providers))
        for _ in range(cfg.warmup):
            plain.run(None, feeds)
            profiled.run(None, feeds)
        wall = []
        for _ in range(runs):
            t0 = time.perf_counter()
            plain.run(None, feeds)
            wall.append((time.perf_counter() - t0) * 1e3)
            profiled.run(None, feeds)
        path = profiled.end_profiling()
        per_node = _node_durations(json.loads(Path(path).read_text()))
    totals = np.sum([np.array(v[cfg.warmup : cfg.warmup + runs]) for v in per_node.values()], axis=0)
    return float(min(wall)), float(totals.min()), len(per_node)


def _node_durations(events: list) -> dict[str, list[float]]:
    per_node: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_node[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1e3 + TRUNCATION_US / 1e3)
    return per_node


def _branches(optimized: onnx.ModelProto, n: int) -> dict[str, int]:
    """Node name -> branch, by following tensors forward from each branch's graph inputs."""
    consumers = defaultdict(list)
    for node in optimized.graph.node:
        for x in node.input:
            if x:
                consumers[x].append(node)
    owner: dict[str, int] = {}
    for i in range(n):
        frontier = [v.name for v in optimized.graph.input if v.name.startswith(_prefix(i))]
        while frontier:
            t = frontier.pop()
            for node in consumers.get(t, []):
                if node.name not in owner:
                    owner[node.name] = i
                    frontier.extend(o for o in node.output if o)
    return owner


def _roles(nodes: list[onnx.NodeProto], p: str, *, quantized: bool = False) -> dict[str, str]:
    """Role of each node of branch `p`: kernel, in_reorder, out_reorder, or helper (not timed)."""
    consumers = defaultdict(list)
    for n in nodes:
        for x in n.input:
            consumers[x].append(n)
    if quantized:
        return _int8_roles(nodes, p, consumers)

    def is_helper(n: onnx.NodeProto) -> bool:
        return HELPER in n.name or any(HELPER in o for o in n.output)

    roles = {}
    for n in nodes:
        if is_helper(n):
            roles[n.name] = "helper"
        elif n.op_type == "ReorderInput" and n.output and consumers[n.output[0]] and all(is_helper(c) for c in consumers[n.output[0]]):
            roles[n.name] = "helper"  # reorders only the helper's input
        elif n.op_type == "ReorderInput" and n.input and n.input[0] == p + INPUT:
            roles[n.name] = "in_reorder"
        elif n.op_type == "ReorderOutput" and p + OUTPUT in n.output:
            roles[n.name] = "out_reorder"
        else:
            roles[n.name] = "kernel"
    return roles


def _int8_roles(nodes: list[onnx.NodeProto], p: str, consumers: dict) -> dict[str, str]:
    """Roles in an int8 graph: the float boundary is the input's quantize and the output's dequantize (see above)."""
    producer = {o: n for n in nodes for o in n.output if o}
    roles = {}
    for n in nodes:
        if n.op_type == "QuantizeLinear" and n.input[0] == p + INPUT:
            roles[n.name] = "in_reorder"
        elif n.op_type == "DequantizeLinear" and p + OUTPUT in n.output:
            roles[n.name] = "out_reorder"
        elif n.op_type == "QuantizeLinear" and n.input[0] not in producer:
            roles[n.name] = "helper"  # the residual's: produced in int8 by the layer before, inside a model
        else:
            roles[n.name] = "kernel"
    for n in nodes:  # the channels-last transposes: beside the boundary, they belong to it; elsewhere they cancel
        if n.op_type != "Transpose":
            continue
        source = producer.get(n.input[0])
        readers = consumers.get(n.output[0], [])
        if source is not None and roles[source.name] == "in_reorder":
            roles[n.name] = "in_reorder"
        elif readers and all(roles[r.name] == "out_reorder" for r in readers):
            roles[n.name] = "out_reorder"
        else:
            roles[n.name] = "helper"
    return roles


def _collect(o: _Open, graphs: list[KernelGraph], cfg: TimingConfig) -> list[GraphTiming]:
    if cfg.method == WALL:
        wall = np.array(o.wall_ms)
        return [GraphTiming(float(wall.min()), float(np.median(wall)), len(wall), 1, "plain", "plain", None, None, ())]
    path = o.session.end_profiling()
    try:
        events = json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)
    per_node = _node_durations(events)
    owner = _branches(o.optimized, len(o.members))
    by_branch: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for node in o.optimized.graph.node:
        if node.name in owner:
            by_branch[owner[node.name]].append(node)
    skip = cfg.warmup  # every node's first runs are the warm-up
    out = []
    for j in range(len(o.members)):
        p = _prefix(j)
        quantized = graphs[o.members[j]].quantized
        roles = _roles(by_branch[j], p, quantized=quantized)
        kernel_nodes = [n for n, r in roles.items() if r == "kernel"]
        runs = min((len(per_node.get(n, [])) for n in roles), default=0) - skip
        if runs <= 0 or not kernel_nodes:
            raise RuntimeError("ONNX Runtime's profile holds no timed runs of a kernel")
        totals = np.zeros(runs)
        for n in kernel_nodes:
            totals += np.array(per_node[n][skip : skip + runs])

        def boundary(role: str) -> float | None:
            names = [n for n, r in roles.items() if r == role]
            if not names:
                return None
            return float(min(sum(per_node[n][skip + i] for n in names) for i in range(runs)))

        types = tuple(f"{n.domain + ':' if n.domain else ''}{n.op_type}" for n in by_branch[j] if roles[n.name] == "kernel")
        if quantized:  # an int8 kernel reads and writes uint8, whatever the boundary's conversions
            in_layout = out_layout = QUANTIZED
        else:
            in_layout = "blocked" if "in_reorder" in roles.values() else "plain"
            out_layout = "blocked" if "out_reorder" in roles.values() else "plain"
        out.append(GraphTiming(
            float(totals.min()),
            float(np.median(totals)),
            runs,
            len(kernel_nodes),
            in_layout,
            out_layout,
            boundary("in_reorder"),
            boundary("out_reorder"),
            types,
        ))
    return out
