"""Benchmark: our layer vs PyTorch (oneDNN), ONNX Runtime (MLAS), NumPy, and the bandwidth limit.

Everything is timed in one process, as users call it (the layer's `__call__` on a NumPy array,
`torch.nn.functional.conv2d` on a channels_last tensor, an ONNX Runtime session's `run`), with
repetitions interleaved across implementations and shapes so that machine noise hits all alike;
medians are reported. Inputs start on 64-byte boundaries for every library, as PyTorch,
TensorFlow and JAX allocate tensors (NumPy's own arrays start on 16: see
`runtime.aligned_empty`). The bandwidth limit is a TVM-compiled copy kernel moving the same
number of bytes as the convolution's compulsory traffic (input + output + weights, each once);
the compute limit is the multiply-add count at the vector-FMA rate a TVM kernel reaches here,
plus the fixed cost of a parallel kernel call (which the copy kernel's time includes too).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import cache
from .layer import DepthwiseConv2D
from .models import MODELS
from .reference import depthwise_reference
from .runtime import aligned_copy, aligned_empty
from .spec import DepthwiseSpec
from .timing import alternating_order, seconds_per_call


@dataclasses.dataclass(frozen=True)
class Shape:
    """One depthwise layer of a model: input H=W, channels, kernel, stride ("same" padding)."""

    model: str
    size: int
    channels: int
    kernel: int
    stride: int

    @property
    def label(self) -> str:
        return f"{self.size}x{self.size}x{self.channels} k{self.kernel} s{self.stride}"


MODEL_NAMES = {"mobilenet_v2": "MobileNetV2", "mobilenet_v1": "MobileNetV1", "efficientnet_b0": "EfficientNet-B0"}


def model_shapes(name: str) -> list[Shape]:
    """Every depthwise layer of a model set (a key of `models.MODELS`), as benchmark shapes.

    Raises:
        ValueError: For an unknown model name.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Expected one of {sorted(MODELS)}.")
    return [Shape(MODEL_NAMES.get(name, name), *layer) for layer in MODELS[name]]


MOBILENET_V2 = model_shapes("mobilenet_v2")
EFFICIENTNET_B0 = [s for s in model_shapes("efficientnet_b0") if (s.channels, s.kernel) in {(240, 5), (672, 5)} and s.stride == 1]
SHAPES = MOBILENET_V2 + EFFICIENTNET_B0  # the standard set: MobileNetV2 and two EfficientNet-B0 5x5 layers


def copy_kernel(n_elements: int, dtype: str = "float32"):
    """A TVM copy of `n_elements` (parallel, vectorized): the bandwidth the machine reaches."""
    import tvm
    from tvm import s_tir, te

    from .compute import relax_alignment
    from .schedules.cpu import simd_bits
    from .targets import resolve_target

    target = resolve_target("host")
    src = te.placeholder((n_elements,), dtype, name="A")
    dst = te.compute((n_elements,), lambda i: src[i], name="B")
    sch = s_tir.Schedule(tvm.IRModule({"main": relax_alignment(te.create_prim_func([src, dst]), 4)}))
    (loop,) = sch.get_loops(sch.get_sblock("B"))
    lanes = 4 * simd_bits(target) // (8 * np.dtype(dtype).itemsize)  # four vectors per iteration
    outer, inner = sch.split(loop, [None, lanes])
    sch.parallel(outer)
    sch.vectorize(inner)
    fn = tvm.compile(sch.mod, target=target).mod["main"]
    a, b = aligned_copy(np.ones(n_elements), dtype), aligned_empty((n_elements,), dtype)
    return lambda: fn(a, b)


def fma_rate(threads_hint: int = 2) -> float:
    """Vector FMAs per second this machine sustains with all TVM threads (fp32, full SIMD width):
    a TVM kernel of independent register accumulators, the compute roof of the roofline."""
    import timeit

    run, fmas = _fma_kernel(threads_hint)
    seconds = min(timeit.repeat(run, number=10, repeat=7)) / 10
    return fmas / seconds


def call_floor_us(threads_hint: int = 2) -> float:
    """Microseconds of the least parallel TVM kernel call from Python here: `fma_rate`'s kernel
    with one FMA step and one block per thread, best of 7 repeats. Every kernel pays it (the
    thread pool's launch and join, the FFI call), the copy kernel's time included, so the FMA
    floor adds it: on 7x7x960 (about 1.5 against 3.7 µs on Zen 4) it is 40% of the multiply-adds' time."""
    import timeit

    run, _ = _fma_kernel(threads_hint, steps=1, blocks_per_thread=1)
    number = 2000
    return min(timeit.repeat(run, number=number, repeat=7)) / number * 1e6


@functools.lru_cache(maxsize=4)
def _fma_kernel(threads_hint: int, steps: int = 4096, blocks_per_thread: int = 64) -> tuple[Callable[[], object], int]:
    """`fma_rate`'s kernel, compiled once per process: a call and its vector FMA count."""
    import tvm
    from tvm import s_tir, te

    from .compute import relax_alignment
    from .schedules.cpu import simd_bits
    from .targets import resolve_target

    target = resolve_target("host")
    lanes = simd_bits(target) // 32
    rows, accumulators = blocks_per_thread * threads_hint, 8
    a = te.placeholder((rows * accumulators, lanes), "float32", name="A")
    b = te.placeholder((steps, lanes), "float32", name="B")
    k = te.reduce_axis((0, steps), "k")
    c = te.compute((rows * accumulators, lanes), lambda j, v: te.sum(a[j, v] * b[k, v], axis=k), name="C")
    sch = s_tir.Schedule(tvm.IRModule({"main": relax_alignment(te.create_prim_func([a, b, c]), 4)}))
    block = sch.get_sblock("C")
    j, v, kk = sch.get_loops(block)
    jo, ji = sch.split(j, [None, accumulators])
    sch.reorder(jo, kk, ji, v)
    sch.parallel(jo)
    local = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(local, jo)
    sch.unroll(ji)
    sch.vectorize(v)
    sch.decompose_reduction(block, kk)
    sch.vectorize(sch.get_loops(local)[-1])
    fn = tvm.compile(sch.mod, target=target).mod["main"]
    args = [np.ones((rows * accumulators, lanes), np.float32), np.full((steps, lanes), 1e-4, np.float32),
            np.empty((rows * accumulators, lanes), np.float32)]
    return (lambda: fn(*args)), rows * accumulators * steps


def fma_floor_us(spec: DepthwiseSpec, rate: float, lanes: int, call_us: float = 0.0) -> float:
    """Least time a kernel call takes for the multiply-adds at `rate` vector FMAs per second,
    plus the `call_us` every call costs."""
    outputs = math.prod(spec.output_shape)
    return outputs * spec.kernel[0] * spec.kernel[1] / lanes / rate * 1e6 + call_us


def _torch_peer(spec: DepthwiseSpec, x_nhwc: np.ndarray, kernel: np.ndarray, bias: np.ndarray):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).contiguous(memory_format=torch.channels_last)
    w = torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(spec.out_channels, 1, *spec.kernel)))
    b = torch.from_numpy(bias)
    pad = spec.kernel[0] // 2  # same arithmetic work as TF-style "same"; output sizes agree here

    def run():
        with torch.inference_mode():
            return F.conv2d(x, w, b, stride=spec.strides, padding=pad, groups=spec.channels)

    return run


def _onnxruntime_peer(spec: DepthwiseSpec, x_nhwc: np.ndarray, kernel: np.ndarray, bias: np.ndarray, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    x = aligned_copy(x_nhwc.transpose(0, 3, 1, 2), x_nhwc.dtype)
    w = np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(spec.out_channels, 1, *spec.kernel))
    top, left, bottom, right = spec.padding
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], group=spec.channels, kernel_shape=list(spec.kernel),
        strides=list(spec.strides), pads=[top, left, bottom, right],
    )
    out_shape = [spec.batch, spec.out_channels, spec.out_height, spec.out_width]
    graph = helper.make_graph(
        [node], "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})


def run(
    batches: tuple[int, ...] = (1, 8),
    shapes: list[Shape] | None = None,
    threads: int = 2,
    rounds: int = 7,
    budget_s: float = 0.03,
    settle_s: float = 0.05,
    warmup_s: float = 0.01,
    peers: tuple[str, ...] = ("torch", "onnxruntime", "numpy"),
    target: str = "host",
) -> list[dict]:
    """Times every implementation on every shape; returns one row per (shape, batch).

    Args:
        batches: Batch sizes.
        shapes: Layers to time (default: MobileNetV2 and two EfficientNet-B0 5x5 layers).
        threads: Threads for every implementation.
        rounds: Interleaved repetitions; the median is reported.
        budget_s: Time spent per implementation per round.
        settle_s: Pause before each measurement, so that the previous library's spinning worker
            threads (ONNX Runtime's and OpenMP's busy-wait after a call) go idle first.
        warmup_s: Untimed calls after the pause, so that the timing starts from a running core
            and thread pool, as in an inference loop, rather than from idle (measured here:
            the first milliseconds after a 50 ms pause ran 5-20% slower, for every library).
        peers: Which peers to run (`torch`, `onnxruntime`, `numpy`); with `torch`, our layer is
            also timed on a torch CPU tensor, as torch users call it.
        target: Our layer's target.

    Returns:
        Rows with medians in microseconds per implementation, bytes and derived ratios.
    """
    import os

    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    if "torch" in peers:
        import torch

        torch.set_num_threads(threads)
    from .records import best_record
    from .schedules.cpu import simd_bits
    from .targets import resolve_target

    # The compute roof is a peak: timed before every shape (compiled once), the fastest sample
    # counts (one sample taken while the VM was slow once doubled every FMA floor); so is the
    # least call.
    rates, calls = [], []
    lanes = simd_bits(resolve_target("host")) // 32
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        for shape in shapes or SHAPES:
            # One shape at a time: its implementations (and their thread pools) exist only
            # while it is measured, and their repetitions are interleaved.
            rates.append(fma_rate(threads))
            calls.append(call_floor_us(threads))
            layer = DepthwiseConv2D(shape.kernel, shape.stride, padding="same", target=target)
            # Every library gets a 64-byte-aligned input, as framework tensors are.
            x = aligned_copy(rng.standard_normal((batch, shape.size, shape.size, shape.channels)), np.float32)
            layer.build(x.shape)
            spec = layer.spec_for(x.shape)
            found = best_record(spec, resolve_target(target))
            algorithm = found.algorithm if found is not None else "direct"
            layer.bias = rng.standard_normal(spec.bias_shape).astype(np.float32)
            kernel, bias = layer.kernel, layer.bias
            error = float(np.abs(layer(x) - depthwise_reference(spec, x, kernel, bias)).max())
            impls = {"ours": lambda layer=layer, x=x: layer(x), "copy": copy_kernel(spec.compulsory_bytes // 8)}
            if "torch" in peers:
                impls["torch"] = _torch_peer(spec, x, kernel, bias)
                # Our layer as a torch user calls it: on a CPU tensor (the same NHWC memory).
                impls["ours_torch"] = lambda layer=layer, tensor=torch.from_numpy(x): layer(tensor)
            if "onnxruntime" in peers:
                impls["onnxruntime"] = _onnxruntime_peer(spec, x, kernel, bias, threads)
            samples = {name: [] for name in impls}
            names = list(impls)
            for name in (names[i] for i in alternating_order(len(names), rounds)):
                time.sleep(settle_s)
                seconds_per_call(impls[name], warmup_s, min_calls=3)
                samples[name].append(seconds_per_call(impls[name], budget_s, min_calls=3))
            if "numpy" in peers:  # for scale only; slow, so timed once
                samples["numpy"] = [seconds_per_call(lambda: depthwise_reference(spec, x, kernel, bias), 0.0, min_calls=3)]
            del impls
            rows.append((shape, batch, spec, algorithm, error, samples))
    rate, call_us = max(rates), min(calls)
    return [_row(*row, fma_floor_us(row[2], rate, lanes, call_us), call_us) for row in rows]


def _row(shape: Shape, batch: int, spec: DepthwiseSpec, algorithm: str, error: float, samples: dict, fma_us: float,
         call_us: float) -> dict:
    us = {name: statistics.median(v) * 1e6 for name, v in samples.items()}
    # `fma_floor_us` counts the direct algorithm's multiply-adds; a Winograd kernel does 2/3 of
    # them (its additions issue beside them on Zen), so its `roof_fraction` may pass 1.
    row = {"model": shape.model, "shape": shape.label, "batch": batch, "algorithm": algorithm,
           "bytes": spec.compulsory_bytes,
           "max_error": error, "us": us, "fma_floor_us": fma_us, "call_floor_us": call_us,
           "gbps": spec.compulsory_bytes / us["ours"] / 1e3,
           "copy_fraction": us["copy"] / us["ours"],
           # The roofline: neither moving the bytes nor doing the multiply-adds can go faster.
           "roof_fraction": max(us["copy"], fma_us) / us["ours"]}
    for peer in ("torch", "onnxruntime"):
        if peer in us:
            row[f"vs_{peer}"] = us[peer] / us["ours"]
    if "ours_torch" in us:
        row["torch_input_vs_torch"] = us["torch"] / us["ours_torch"]
    peer_times = [us[p] for p in ("torch", "onnxruntime") if p in us]
    if peer_times:
        row["vs_best_peer"] = min(peer_times) / us["ours"]
        # What a kernel running at the roof would gain over the best peer in this same run: the
        # most any speed-up target can ask for on this machine.
        row["ceiling_vs_best_peer"] = min(peer_times) / max(us["copy"], fma_us)
    return row


def layer_overhead_us(repeats: int = 7, number: int = 20000) -> dict:
    """The layer's own per-call cost on a tiny shape: `layer(x)` minus the bare kernel call.

    Returns:
        `{"layer_us", "kernel_us", "overhead_us"}`, best of `repeats` each, the two timed in
        turns so that both see the same phases of a shared machine (timed one after the other,
        a slow phase over the kernel's repeats once gave -0.34 us).
    """
    import timeit

    layer = DepthwiseConv2D(3, padding="same")
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 8)).astype(np.float32)
    layer(x)
    op = layer._op(x.shape, None)
    out = np.empty(op.spec.output_shape, np.float32)
    kernel, bias, fn = layer.kernel, layer.bias, op._fn
    calls = {"layer_us": lambda: layer(x), "kernel_us": lambda: fn(x, kernel, bias, out)}
    best = dict.fromkeys(calls, math.inf)
    for _ in range(repeats):
        for name, call in calls.items():
            best[name] = min(best[name], timeit.timeit(call, number=number) / number * 1e6)
    return {**best, "overhead_us": best["layer_us"] - best["kernel_us"]}


def geomean(values: list[float]) -> float:
    """Geometric mean."""
    return math.exp(sum(math.log(v) for v in values) / len(values))


def markdown(rows: list[dict], summarize: tuple[str, ...] = ("MobileNetV2",)) -> str:
    """The results as a Markdown table plus per-batch geometric means.

    Args:
        rows: What `run` returned.
        summarize: Models (as rows name them) that get geometric-mean lines: the standard set's
            two EfficientNet-B0 layers are examples of 5x5 kernels, not a model.

    Returns:
        Markdown text.
    """
    peers = [p for p in ("torch", "onnxruntime", "numpy") if p in rows[0]["us"]]
    head = ["layer", "batch", "ours µs", "GB/s", "% of copy", "copy µs", "FMA floor µs", "% of roof"]
    head += [f"{p} µs" for p in peers]
    head += [f"ours vs {p}" for p in peers if p != "numpy"]
    with_peers = "ceiling_vs_best_peer" in rows[0]
    if with_peers:
        head += ["roof vs best peer"]
    on_torch = "ours_torch" in rows[0]["us"]
    if on_torch:
        head += ["ours on torch tensors µs", "on torch tensors: ours vs torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        us = row["us"]
        winograd = " (Winograd)" if row.get("algorithm") == "winograd" else ""
        cells = [f"{row['model']} {row['shape']}{winograd}", str(row["batch"]), f"{us['ours']:.1f}", f"{row['gbps']:.1f}",
                 f"{100 * row['copy_fraction']:.0f}%", f"{us['copy']:.1f}", f"{row['fma_floor_us']:.1f}",
                 f"{100 * row['roof_fraction']:.0f}%"]
        cells += [f"{us[p]:.1f}" for p in peers]
        cells += [f"{row[f'vs_{p}']:.2f}x" for p in peers if p != "numpy"]
        if with_peers:
            cells += [f"{row['ceiling_vs_best_peer']:.2f}x"]
        if on_torch:
            cells += [f"{us['ours_torch']:.1f}", f"{row['torch_input_vs_torch']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for batch in sorted({r["batch"] for r in rows}):
        for model in summarize:
            lines.extend(_summary(batch, model, [r for r in rows if r["batch"] == batch and r["model"] == model], on_torch))
    return "\n".join(lines) + "\n"


def _summary(batch: int, model: str, model_rows: list[dict], on_torch: bool) -> list[str]:
    """The geometric-mean line of one model at one batch size (none without peers)."""
    lines = []
    if model_rows and "vs_best_peer" in model_rows[0]:
        lines.append(
            f"- batch {batch}, {model}: geomean speed-up vs the best peer per shape "
            f"{geomean([r['vs_best_peer'] for r in model_rows]):.2f}x (slowest shape "
            f"{min(r['vs_best_peer'] for r in model_rows):.2f}x; a kernel at the roof would reach "
            f"{geomean([r['ceiling_vs_best_peer'] for r in model_rows]):.2f}x); % of copy rate: min "
            f"{100 * min(r['copy_fraction'] for r in model_rows):.0f}%, geomean "
            f"{100 * geomean([r['copy_fraction'] for r in model_rows]):.0f}%; % of roof (max of copy "
            f"time and FMA floor): min {100 * min(r['roof_fraction'] for r in model_rows):.0f}%, geomean "
            f"{100 * geomean([r['roof_fraction'] for r in model_rows]):.0f}%"
            + (f"; on torch tensors, geomean vs torch {geomean([r['torch_input_vs_torch'] for r in model_rows]):.2f}x"
               if on_torch else "")
        )
    return lines


def plot(rows: list[dict], path: Path) -> None:
    """Bar chart of achieved GB/s per layer and implementation, one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    names = [n for n in ("ours", "torch", "onnxruntime", "copy") if n in rows[0]["us"]]
    fig, axes = plt.subplots(len(batches), 1, figsize=(13, 4.2 * len(batches)), squeeze=False)
    for ax, batch in zip(axes[:, 0], batches):
        sel = [r for r in rows if r["batch"] == batch]
        xs = np.arange(len(sel))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            rates = [r["bytes"] / r["us"][name] / 1e3 for r in sel]
            label = "copy kernel (bandwidth limit)" if name == "copy" else name
            ax.bar(xs + i * width, rates, width, label=label)
        ax.set_xticks(xs + 0.4 - width / 2, [r["shape"] for r in sel], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("GB/s of compulsory traffic")
        ax.set_title(f"Depthwise conv, fp32, batch {batch}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    cache.atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
