"""The README's main job: compile the layer for this machine, run the seed's example and
MobileNetV2-sized layers, check each against the NumPy reference, print shapes and latencies."""

from __future__ import annotations

import statistics
import time

import numpy as np

from .layer import DepthwiseConv2D
from .reference import depthwise_reference
from .runtime import aligned_copy
from .targets import resolve_target, target_key
from .timing import seconds_per_call

# (title, layer arguments, input shape, NumPy activation for the reference)
CASES = [
    ("seed example: DepthwiseConv2D(3, 3, activation='relu') -> strides=3",
     dict(kernel_size=3, strides=3, activation="relu"), (4, 10, 10, 12), lambda y: np.maximum(y, 0)),
    ("seed shape (4, 8, 8, 36): kernel_size=3, depth_multiplier=3, activation='relu'",
     dict(kernel_size=3, depth_multiplier=3, activation="relu"), (4, 10, 10, 12), lambda y: np.maximum(y, 0)),
    ("MobileNetV2 block 1: 112x112x32, 3x3 same, relu6",
     dict(kernel_size=3, padding="same", activation="relu6"), (1, 112, 112, 32), lambda y: np.clip(y, 0, 6)),
    ("MobileNetV2 block 4: 56x56x144, 3x3 same, stride 2, relu6",
     dict(kernel_size=3, strides=2, padding="same", activation="relu6"), (1, 56, 56, 144), lambda y: np.clip(y, 0, 6)),
    ("MobileNetV2 block 13: 14x14x576, 3x3 same, relu6, channels_first",
     dict(kernel_size=3, padding="same", activation="relu6", data_format="channels_first"), (1, 576, 14, 14),
     lambda y: np.clip(y, 0, 6)),
]


def _median_us(fn, repeats: int = 15) -> float:
    # Warm up first: right after the NumPy reference, caches are cold and TVM's workers asleep,
    # which made single-call samples read up to 2x the steady-state latency.
    seconds_per_call(fn, 0.02)
    return statistics.median(seconds_per_call(fn, 0.01, min_calls=3) for _ in range(repeats)) * 1e6


def run(target: str = "host", tolerance: float = 1e-4) -> bool:
    """Runs every demo case; returns True when all match the reference.

    Args:
        target: The TVM target to compile for.
        tolerance: Largest accepted absolute error against the float64 reference.

    Returns:
        Whether every case matched.
    """
    tgt = resolve_target(target)
    print(f"target: {tgt}  (key {target_key(tgt)})")
    rng = np.random.default_rng(0)
    ok = True
    for title, kwargs, shape, activation in CASES:
        layer = DepthwiseConv2D(**kwargs, target=target)
        # 64-byte aligned, as the README asks of inputs fed in a loop: NumPy's own large arrays
        # start 16 bytes off, which made 56x56x144 s2 2.5x slower on the Ice Lake VMs.
        x = aligned_copy(rng.standard_normal(shape), "float32")
        start = time.perf_counter()
        y = layer(x)
        first_ms = (time.perf_counter() - start) * 1e3
        spec = layer.spec_for(x.shape)
        expected = activation(depthwise_reference(spec, x, layer.kernel, layer.bias))
        error = float(np.abs(y - expected).max())
        latency = _median_us(lambda: layer(x))
        passed = error <= tolerance
        ok &= passed
        print(f"\n{title}")
        print(f"  input {x.shape} -> output {y.shape}   first call (compile or cache load) {first_ms:.0f} ms")
        print(f"  latency {latency:.1f} us   max |error| vs NumPy {error:.2e}   {'OK' if passed else 'MISMATCH'}")
    print("\nall outputs match the NumPy reference" if ok else "\nSOME OUTPUTS DO NOT MATCH")
    return ok
