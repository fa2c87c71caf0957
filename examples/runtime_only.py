"""Runs a depthwise op exported by `dwconv-tvm compile` with the TVM runtime alone.

No dwconv_tvm and no TVM compiler are imported: `tvm_ffi` (apache-tvm-ffi) loads the library
and `libtvm_runtime.so` from the TVM wheel provides the CPU thread pool the kernel calls. The
JSON sidecar beside the library gives the entry function and its arguments in order.

    python examples/runtime_only.py dw.so --x x.npy --kernel k.npy [--bias b.npy] --out y.npy
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import tvm_ffi


def load_tvm_runtime() -> None:
    """Loads the TVM wheel's runtime library (found without importing `tvm`, which would load
    the compiler too) so the kernel's calls into TVM's thread pool resolve."""
    found = importlib.util.find_spec("tvm")
    if found is None or found.origin is None:
        raise SystemExit("the TVM runtime library (the apache-tvm wheel) is not installed")
    library = Path(found.origin).parent / "lib" / "libtvm_runtime.so"
    ctypes.CDLL(str(library), mode=os.RTLD_GLOBAL)


def check_cpu(library: Path, sidecar: dict) -> None:
    """Exits with a message where this CPU lacks an extension the library may use: loading
    would work, and the first call would kill the process (illegal instruction)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as host
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as host
    # NumPy leaves out what it does not probe on this architecture: unknown is not missing.
    missing = [name for name in sidecar.get("cpu_features", []) if host.get(name) is False]
    if missing:
        raise SystemExit(
            f"{library.name} was compiled for {sidecar['target']}, whose code may use {', '.join(missing)}: "
            "this CPU lacks them. Export it for this machine (target host) or a baseline such as x86-64-avx2."
        )


def run(library: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Calls the exported op on `inputs` (by argument name); returns the output."""
    sidecar = json.loads(library.with_suffix(".json").read_text())
    check_cpu(library, sidecar)
    load_tvm_runtime()
    entry = tvm_ffi.load_module(str(library.resolve()))[sidecar["entry"]]  # dlopen needs a path, not a name
    arguments = []
    for argument in sidecar["arguments"]:
        shape, dtype = tuple(argument["shape"]), np.dtype(argument["dtype"])
        if argument.get("output"):
            out = np.empty(shape, dtype)
            arguments.append(out)
            continue
        value = np.ascontiguousarray(inputs[argument["name"]])
        if value.shape != shape or value.dtype != dtype:
            raise SystemExit(f"{argument['name']}: expected {shape} {dtype}, got {value.shape} {value.dtype}")
        arguments.append(value)
    entry(*[tvm_ffi.from_dlpack(a) for a in arguments])  # zero-copy views of the NumPy buffers
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", type=Path)
    parser.add_argument("--x", required=True)
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--bias")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    inputs = {"x": np.load(args.x), "kernel": np.load(args.kernel)}
    if args.bias:
        inputs["bias"] = np.load(args.bias)
    out = run(args.library, inputs)
    np.save(args.out, out)
    print(f"{args.library.name}: output {out.shape} {out.dtype} written to {args.out}")


if __name__ == "__main__":
    main()
