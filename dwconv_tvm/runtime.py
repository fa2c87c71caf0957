"""`CompiledOp`: a compiled depthwise kernel that is called with NumPy or DLPack tensors.

The kernel takes C-contiguous buffers of the spec's dtype and exact shapes. Every argument is
checked here before it reaches TVM, so a bad call raises a ValueError/TypeError that names the
argument instead of crashing or returning wrong numbers. CPU tensors from other frameworks go
through `numpy.from_dlpack` (no copy); outputs come back in the caller's framework.
"""

from __future__ import annotations

import ctypes
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .spec import DepthwiseSpec


def as_host_array(value: Any, name: str) -> np.ndarray:
    """A NumPy view of a NumPy array or a CPU `__dlpack__` tensor (copied only when it must be).

    Args:
        value: The tensor.
        name: Argument name for error messages.

    Returns:
        A NumPy array sharing memory with `value` where possible.

    Raises:
        TypeError: If `value` is not an array-like tensor.
    """
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__dlpack__"):
        if getattr(value, "requires_grad", False):
            value = value.detach()  # inference only: torch refuses to export graph tensors
        try:
            return np.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError, ValueError) as err:
            raise TypeError(
                f"`{name}` could not be read through DLPack as a CPU tensor: {err}"
            ) from None
    if isinstance(value, (list, tuple)) or hasattr(value, "__array__"):
        return np.asarray(value)
    raise TypeError(
        f"`{name}` must be a NumPy array or a tensor with `__dlpack__`. "
        f"Received an object of type {type(value).__name__}"
    )


def aligned_empty(shape: Sequence[int], dtype: Any = "float32", alignment: int = 64) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on an `alignment`-byte boundary.

    The kernels load whole SIMD vectors along the channels; a vector that straddles two cache
    lines costs an extra load. NumPy's allocations start on 16-byte boundaries only, while
    PyTorch, TensorFlow and JAX allocate on 64: on znver4 a 16- or 48-byte offset of the input
    made MobileNetV2's 28x28-and-larger layers 1.07-1.25x slower, on the Ice Lake VMs a 16-byte
    offset up to 2.2x (56x56x144 s2; 28x28x192 s1 1.3x). Use this for the NumPy buffers you
    feed the layer.

    Args:
        shape: The array's shape.
        dtype: The array's dtype.
        alignment: Byte boundary of the first element, a power of two.

    Returns:
        A writeable array (a view into a slightly larger buffer, which it keeps alive).

    Raises:
        ValueError: If `alignment` is not a positive power of two or `shape` has a negative
            dimension.
        TypeError: If `alignment` is not an integer.
    """
    if isinstance(alignment, bool) or not isinstance(alignment, (int, np.integer)):
        raise TypeError(f"`alignment` must be an integer power of two. Received {alignment!r}")
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"`alignment` must be a positive power of two. Received {alignment}")
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"`shape` must have non-negative dimensions. Received {shape}")
    return fresh_output(shape, dtype, math.prod(shape) * dtype.itemsize, alignment)


def fresh_output(shape: tuple[int, ...], dtype: np.dtype, nbytes: int, alignment: int = 64) -> np.ndarray:
    """A new aligned array, for the hot path: `aligned_empty` without its argument checks (the
    caller passes a validated shape, a `np.dtype`, the byte count and a power of two).

    NumPy's own large arrays start 16 bytes past a page boundary, so every vector store of the
    kernel straddles two cache lines: on the Ice Lake VMs an output 16 bytes off made
    28x28x192 s1 2.8x slower (18.6 -> 51.7 us) and 14x14x576 s1 2.3x, for about 2 us more than
    `np.empty` per call.
    """
    raw = np.empty(nbytes + alignment, np.uint8)
    return np.ndarray(shape, dtype, buffer=raw, offset=-raw.ctypes.data % alignment)


def aligned_copy(value: Any, dtype: Any) -> np.ndarray:
    """`value` converted to `dtype` in a fresh 64-byte-aligned array (weights: copied once,
    read on every call)."""
    array = np.asarray(value, dtype=dtype)
    result = aligned_empty(array.shape, dtype)
    result[...] = array
    return result


def reference_counts(array: np.ndarray) -> tuple[int, int]:
    """`sys.getrefcount` of a pooled array and of its buffer, as `OutputPool` reads them."""
    return sys.getrefcount(array), sys.getrefcount(array.base)


class OutputPool:
    """Output arrays of one shape and dtype, handed out again once nothing else refers to them.

    A fresh `np.empty` output costs a NumPy allocation per call and starts off the 64-byte
    boundary the kernels' vector stores want (znver4, 112x112x32: 2-3 µs of a 36 µs call).
    Pooled arrays are allocated aligned once, with a TVM view made once (the call then skips
    converting the output). An array is reused only when reference counts show that the pool
    alone holds it and its memory: any name, view, slice, container, memoryview or DLPack
    tensor still referring to it (NumPy's views refer to the buffer underneath, so both are
    counted) keeps it out of reuse. Two slots cover a dropped result and `y = layer(x)` in a
    loop (the old `y` lives until the call returns); `slots` may lower that (0: every output
    fresh).

    The counts that mean "the pool alone" are measured on each new entry before anyone else can
    see it, by the same call the reuse check makes, rather than assumed: what `getrefcount`
    includes for a local variable passed to it changes between interpreters (Python 3.14
    borrows such references), and an assumed count one too high would hand out an array
    that the caller still holds.
    """

    # Reference counts say who holds an array only under the GIL; a free-threaded build
    # (Python 3.13t) defers them, so it always gets fresh arrays.
    slots = 2 if getattr(sys, "_is_gil_enabled", lambda: True)() else 0

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, slots: int | None = None):
        self._shape, self._dtype = shape, dtype
        if slots is not None:
            self.slots = min(slots, type(self).slots)
        self._nbytes = math.prod(shape) * dtype.itemsize
        # Entries: [array, its TVM view, the counts when only the pool holds them].
        self._entries: tuple[list, ...] = ()

    def take(self) -> tuple[np.ndarray, Any]:
        """An output array no one else holds, and what to pass the kernel for it: a pooled
        array and its view, a new pooled one while a slot is free, else a fresh aligned array
        (passed as itself) when the caller holds every slot."""
        for entry in self._entries:
            array = entry[0]
            # Held here by the entry, the view and this local (under the GIL a concurrent
            # caller's local adds one for both callers, so neither takes it).
            if reference_counts(array) == entry[2]:
                return array, entry[1]  # a new tuple, so the array stays counted until unpacked
        if len(self._entries) >= self.slots:
            array = fresh_output(self._shape, self._dtype, self._nbytes)
            return array, array
        array = aligned_empty(self._shape, self._dtype)
        entry = [array, device_view(array), None]
        entry[2] = reference_counts(array)  # as the check above will see it: entry, view, local
        self._entries = (*self._entries, entry)  # one assignment: readers see all or none
        return array, entry[1]


def kernel_input(array: np.ndarray) -> np.ndarray:
    """`array` as the kernel can take it: C-contiguous (one copy otherwise) and not flagged
    read-only. tvm_ffi's DLPack export refuses read-only arrays (JAX arrays, `np.asarray` of
    them, read-only memmaps), so those pass as a writable alias of the same memory: the kernel
    only reads its inputs."""
    if not array.flags.c_contiguous:
        return np.ascontiguousarray(array)
    if array.flags.writeable or array.size == 0:
        return array
    raw = (ctypes.c_char * array.nbytes).from_address(array.ctypes.data)
    return np.frombuffer(raw, dtype=array.dtype).reshape(array.shape)  # the caller keeps `array` alive


def device_view(array: np.ndarray) -> Any:
    """A TVM tensor sharing `array`'s memory (C-contiguous, not read-only, as `kernel_input`
    makes it), for arguments that stay the same across calls: the FFI then skips converting
    them on every call (about 0.1 µs each on znver4). The tensor keeps `array` alive."""
    import tvm_ffi

    # The kernels are compiled for 4-byte alignment (`compute.relax_alignment`).
    return tvm_ffi.from_dlpack(array, require_alignment=array.dtype.itemsize)


def like_input(result: np.ndarray, original: Any) -> Any:
    """Returns `result` in the framework of `original` (zero-copy via DLPack), else NumPy."""
    if isinstance(original, np.ndarray) or not hasattr(original, "__dlpack__"):
        return result
    top = type(original).__module__.split(".")[0]
    top = {"jaxlib": "jax"}.get(top, top)  # JAX arrays are jaxlib types; jax.numpy has from_dlpack
    for module_name in (top, f"{top}.numpy"):
        module = sys.modules.get(module_name)
        from_dlpack = getattr(module, "from_dlpack", None)
        if from_dlpack is not None:
            return from_dlpack(result)
    return result


def _check(arr: np.ndarray, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if arr.dtype != dtype:
        raise TypeError(f"`{name}` must have dtype {dtype}. Received dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}. Received shape {arr.shape}")
    # The kernel indexes densely; any other strides (views, Fortran order) get one copy.
    return kernel_input(arr)


# Outputs up to this size are pooled by `CompiledOp` (MobileNetV2 at batch 1: up to 1.6 MB).
POOLED_OUTPUT_BYTES = 4 << 20


class CompiledOp:
    """A depthwise convolution kernel compiled for one spec and one target.

    Call it as `op(x, kernel, bias)` (no bias when `spec.bias` is False).

    Args:
        module: The TVM runtime module holding the kernel.
        spec: The workload it computes.
        target: Canonical text of the target it was compiled for.
        schedule: Which schedule produced it (e.g. `"default:llvm"`).
        path: The shared library on disk, if any.

    Raises:
        RuntimeError: If the kernel cannot run on this machine: a CPU target whose instruction
            set extensions this CPU lacks, or a GPU kernel without the GPU runtime.
    """

    entry = "main"

    def __init__(self, module, spec: DepthwiseSpec, target: str, schedule: str, path: Path | None = None):
        self.module = module
        self.spec = spec
        self.target = target
        self.schedule = schedule
        self.path = path
        kind = json.loads(target).get("kind", "llvm") if target.lstrip().startswith("{") else target.split()[0]
        self.on_gpu = kind != "llvm"
        if not self.on_gpu:
            from .targets import missing_cpu_features

            missing = missing_cpu_features(target)
            if missing:
                raise RuntimeError(
                    f"This kernel was compiled for {target}, whose code may use {', '.join(missing)}: "
                    "this CPU lacks them, and the first call would kill the process (illegal "
                    "instruction). Compile it for this machine (target 'host') instead."
                )
        try:
            self._fn = module[self.entry]
        except Exception as err:  # e.g. a CUDA kernel on a machine without the CUDA runtime
            raise RuntimeError(
                f"The {kind} kernel cannot run on this machine ({str(err).splitlines()[-1]}). "
                "Build it for a machine that can with dwconv_tvm.export(spec, path, target)."
            ) from None
        self._dtype = np.dtype(spec.dtype)
        self._in_shape, self._kernel_shape = spec.input_shape, spec.kernel_shape
        self._bias_shape, self._out_shape = spec.bias_shape, spec.output_shape
        self._out_nbytes = math.prod(self._out_shape) * self._dtype.itemsize
        # `__call__`'s outputs, reused once the caller drops them, as the layer's are: a fresh
        # array per call cost about 1-2 us here (znver4, 14x14x384: a 6.7 us kernel). Ops live
        # on in the process's compile cache, and their pools with them, so only outputs small
        # enough for that cost to matter are pooled.
        pooled = not self.on_gpu and self._out_nbytes <= POOLED_OUTPUT_BYTES
        self._outputs = OutputPool(self._out_shape, self._dtype, None if pooled else 0)

    def __repr__(self) -> str:
        return f"CompiledOp({self.spec.key}, target={self.target}, schedule={self.schedule})"

    def run_checked(self, x: np.ndarray, kernel: Any, bias: Any) -> np.ndarray:
        """Runs on arguments the caller has already validated (C-contiguous NumPy arrays of the
        spec's shapes and dtype, or on CPU `device_view`s of such weights); returns a new output
        array. The layer's hot path."""
        if self.on_gpu:
            return self._call_on_device(x, kernel, bias)
        out = fresh_output(self._out_shape, self._dtype, self._out_nbytes)
        if bias is None:
            self._fn(x, kernel, out)
        else:
            self._fn(x, kernel, bias, out)
        return out

    def __call__(self, x: Any, kernel: Any, bias: Any = None, *, out: np.ndarray | None = None) -> Any:
        """Runs the kernel.

        Args:
            x: Input, shape `spec.input_shape`, dtype `spec.dtype`.
            kernel: Depthwise kernel, shape `(kh, kw, C, depth_multiplier)`.
            bias: Bias, shape `(C * depth_multiplier,)`; required iff `spec.bias`.
            out: Optional C-contiguous NumPy array to write the result into.

        Returns:
            The output, in the framework of `x`. Without `out`, a NumPy array that nothing
            else refers to: the op reuses the arrays of results the caller has dropped (see
            `OutputPool`), so a result held in any way is never overwritten.

        Raises:
            ValueError: On a shape mismatch or a missing/unexpected bias.
            TypeError: On a dtype mismatch or an unsupported tensor type.
        """
        self._check_bias_given(bias)
        if self.on_gpu:
            if out is not None:
                raise ValueError("`out` is not supported for GPU ops: the result is allocated on the device.")
            return self._call_on_device(x, kernel, bias)
        args = [self._host_argument(x, "x", self._in_shape), self._host_argument(kernel, "kernel", self._kernel_shape)]
        if bias is not None:
            args.append(self._host_argument(bias, "bias", self._bias_shape))
        if out is None:
            result, passed = self._outputs.take()
        else:
            flags = out.flags if isinstance(out, np.ndarray) else None
            if flags is None or not flags.c_contiguous or not flags.writeable:
                raise TypeError("`out` must be a writeable C-contiguous NumPy array.")
            result = passed = self._host_argument(out, "out", self._out_shape)  # `out` itself, checked
            for arg in args:  # a loop, not any() over a generator: 0.6 us less per call
                if np.may_share_memory(result, arg):
                    raise ValueError("`out` must not overlap the inputs.")
        self._fn(*args, passed)
        return like_input(result, x)

    def _host_argument(self, value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """`value` checked and as the kernel takes it. A writable C-contiguous NumPy array of
        the spec's dtype and shape, the usual case, passes after a few identity and tuple
        comparisons (the general checks took about 0.4 us per argument on znver4)."""
        if type(value) is np.ndarray and value.dtype is self._dtype and value.shape == shape:
            flags = value.flags
            if flags.c_contiguous and flags.writeable:
                return value
        return _check(as_host_array(value, name), name, shape, self._dtype)

    def _check_bias_given(self, bias: Any) -> None:
        if self.spec.bias and bias is None:
            raise ValueError("`bias` is required: this op was compiled with a bias.")
        if not self.spec.bias and bias is not None:
            raise ValueError("`bias` must be None: this op was compiled without a bias.")

    def _call_on_device(self, x: Any, kernel: Any, bias: Any) -> Any:
        """GPU path: device tensors (torch.cuda, ...) pass through DLPack; host arrays are copied
        to the device and the result copied back. TVM checks device, shape and dtype."""
        import tvm

        device = tvm.cuda(0)

        def on_device(value: Any, name: str, shape: tuple[int, ...]) -> Any:
            if value is None:
                return None
            device_type = value.__dlpack_device__()[0] if hasattr(value, "__dlpack_device__") else 1
            if device_type != 1:  # already on an accelerator
                return value
            return tvm.runtime.tensor(_check(as_host_array(value, name), name, shape, self._dtype), device)

        args = [on_device(x, "x", self._in_shape), on_device(kernel, "kernel", self._kernel_shape)]
        if self.spec.bias:
            args.append(on_device(bias, "bias", self._bias_shape))
        result = tvm.runtime.empty(self._out_shape, self.spec.dtype, device)
        self._fn(*args, result)
        return result.numpy() if isinstance(x, np.ndarray) else like_input(result, x)
