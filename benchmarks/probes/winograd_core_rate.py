"""Probe: how close does one core run the Winograd template to its FMA floor, by data size?

Winograd F(2, 3) along the rows takes 6 vector FMAs per output vector. This builds the template's
default Winograd schedule (7-row tiles, channel chunks of one vector) for 14x14 layers of
growing channel counts, times the bare kernels on ONE thread (back to back, interleaved rounds,
medians), subtracts the time of a near-empty call, and prints nanoseconds per output vector
beside the 6-FMA floor at this core's FMA rate (`dwconv_tvm.bench.fma_rate`). Layers whose
input and output fit the core's L2 show what the compute reaches; the larger ones add what
their memory traffic costs. Power-of-two channel counts show L1 set aliasing: pixels 1-2 KB
apart share a few of the L1's sets (addresses 4 KB apart map to the same set), so a narrow
channel slice's 3x3 windows evict each other (znver4: 14x14x256 and 14x14x512 well below
14x14x240 and 14x14x272; figures in the README's Performance section).

    python benchmarks/probes/winograd_core_rate.py [CHANNELS ...]   # default: 64 128 256 576
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM's thread pool starts

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import s_tir  # noqa: E402

from dwconv_tvm.bench import fma_rate  # noqa: E402
from dwconv_tvm.compute import depthwise_module  # noqa: E402
from dwconv_tvm.runtime import aligned_copy  # noqa: E402
from dwconv_tvm.schedules import cpu  # noqa: E402
from dwconv_tvm.spec import DepthwiseSpec  # noqa: E402
from dwconv_tvm.targets import resolve_target  # noqa: E402
from dwconv_tvm.timing import alternating_order, seconds_per_call  # noqa: E402

TARGET = resolve_target("host")
ROUNDS = 9


def kernel_call(spec: DepthwiseSpec):
    """The default Winograd kernel of `spec`, bound to random aligned arguments."""
    sch = s_tir.Schedule(depthwise_module(spec, "winograd"))
    cpu.schedule(sch, spec, TARGET)
    fn = tvm.tirx.build(sch.mod, target=TARGET)["main"]
    rng = np.random.default_rng(0)
    x = aligned_copy(rng.uniform(-1, 1, spec.input_shape), np.float32)
    k = aligned_copy(rng.uniform(-1, 1, spec.kernel_shape), np.float32)
    out = aligned_copy(np.zeros(spec.output_shape), np.float32)
    return lambda: fn(x, k, out)


def main(channel_counts: list[int]) -> None:
    lanes = cpu.vector_lanes(DepthwiseSpec.from_keras((1, 4, 4, 16), 3), TARGET)
    specs = {c: DepthwiseSpec.from_keras((1, 14, 14, c), 3, padding="same", use_bias=False) for c in channel_counts}
    calls = {c: kernel_call(s) for c, s in specs.items()}
    calls[0] = kernel_call(DepthwiseSpec.from_keras((1, 4, 4, lanes), 3, padding="same", use_bias=False))
    samples: dict[int, list[float]] = {c: [] for c in calls}
    names = list(calls)
    for i in alternating_order(len(names), ROUNDS):
        call = calls[names[i]]
        time.sleep(0.02)
        seconds_per_call(call, 0.01, 3)
        samples[names[i]].append(seconds_per_call(call, 0.03, 3))
    empty = statistics.median(samples[0])
    floor_ns = 6 / fma_rate(1) * 1e9
    print(f"one thread; near-empty call {empty * 1e6:.2f} us; 6-FMA floor {floor_ns:.2f} ns per output vector")
    for c, spec in specs.items():
        vectors = spec.out_height * spec.out_width * c // lanes
        megabytes = spec.compulsory_bytes / 2**20
        ns = (statistics.median(samples[c]) - empty) / vectors * 1e9
        print(f"14x14x{c}: {megabytes:.2f} MiB, {ns:.2f} ns per output vector ({floor_ns / ns:.0%} of the floor)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [64, 128, 256, 576])
