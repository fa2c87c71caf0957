"""Exporting a kernel for a target (cross-linking where needed) and loading an exported one.

An export is a library plus a JSON sidecar beside it (`dw.so` + `dw.json`) that says what a
runtime needs: the spec, the target, the TVM version, the schedule used, the entry function and
its arguments in order with shapes, dtypes and layouts (`compute.kernel_arguments`).
"""

from __future__ import annotations

import os
import platform
import shutil
import warnings
from pathlib import Path

from . import cache
from .build import build_executable, checked_target, file_digest, load_library, write_library
from .runtime import CompiledOp
from .spec import DepthwiseSpec
from .targets import TargetLike

CROSS_CC_ENV = "DWCONV_TVM_CROSS_CC"
# Debian's cross toolchains, per target architecture (the mtriple's first part).
CROSS_COMPILERS = {"aarch64": "aarch64-linux-gnu-gcc", "arm": "arm-linux-gnueabihf-gcc"}
_HOST_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


def target_arch(target) -> str:
    """The CPU architecture a target's code runs on (its host's, for GPU targets)."""
    cpu = target if target.kind.name == "llvm" else target.host
    triple = str(cpu.attrs.get("mtriple") or "") if cpu is not None else ""
    return triple.split("-")[0] if triple else host_arch()


def host_arch() -> str:
    """This machine's architecture in LLVM's spelling (`x86_64`, `aarch64`)."""
    machine = platform.machine().lower()
    return _HOST_ARCH.get(machine, machine)


def cross_compiler(arch: str) -> str | None:
    """The cross compiler that links libraries for `arch` here: `$DWCONV_TVM_CROSS_CC`, else
    Debian's `<triple>-gcc` when installed, else None."""
    chosen = os.environ.get(CROSS_CC_ENV) or CROSS_COMPILERS.get(arch)
    return shutil.which(chosen) if chosen else None


def export(spec: DepthwiseSpec, path: str | Path, target: TargetLike = "host") -> Path:
    """Compiles `spec` for `target` and writes the library at `path` plus its JSON sidecar.

    The best tuning record for the target is used when there is one. Works for targets this
    machine cannot run: CUDA without a GPU, and other CPU architectures, linked with a cross
    compiler (Debian's `aarch64-linux-gnu-gcc`, or `$DWCONV_TVM_CROSS_CC`). Without one, the
    object files are packed into `<path stem>.tar` instead (with a warning), which TVM's
    `load_module` links on the device.

    Args:
        spec: The workload.
        path: Where the shared library goes; the sidecar is `path` with suffix `.json`.
        target: A named target (`host`, `x86-64-avx2`, `x86-64-avx512`, `aarch64`, `cuda`),
            a TVM target string or JSON dict, or a `tvm.target.Target`.

    Returns:
        The path written (`.tar` when no cross linker was found).

    Raises:
        TypeError: If `spec` is not a `DepthwiseSpec`.
        ValueError: If the target is invalid or unsupported, or `path` is a folder or lies
            where no folder can be created or written.
    """
    tgt = checked_target(spec, target)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"`path` must be a file path for the library, not a folder. Received: {str(path)!r}")
    cache.writable_folder(path.parent, f"`path` must be in a folder this process can create and write to. "
                                       f"Received: {str(path)!r}")
    executable, schedule_name = build_executable(spec, tgt)
    arch, fcompile = target_arch(tgt), None
    if arch != host_arch():
        linker = cross_compiler(arch)
        if linker is None:
            warnings.warn(
                f"No cross linker for {arch} here (install Debian's gcc-{arch}-linux-gnu or set "
                f"{CROSS_CC_ENV}); wrote the object files as {path.with_suffix('.tar').name}, "
                "which TVM's load_module links on the device.", stacklevel=2,
            )
            path = path.with_suffix(".tar")
        else:
            from tvm.support import cc

            fcompile = cc.cross_compiler(linker)
    return write_library(executable, spec, str(tgt), schedule_name, path, fcompile=fcompile)


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of an exported library, checked against the library's bytes.

    Args:
        path: The library (its sidecar is `path` with suffix `.json`).

    Returns:
        The sidecar's content.

    Raises:
        ValueError: If the library or sidecar is missing, unreadable, or they do not match.
    """
    path = Path(path)
    sidecar_path = path.with_suffix(".json")
    if not path.is_file():
        raise ValueError(f"No library at {str(path)!r}.")
    sidecar = cache.read_json(sidecar_path)
    if sidecar is None or not isinstance(sidecar.get("spec"), dict) or "target" not in sidecar:
        raise ValueError(
            f"Missing or unreadable sidecar {str(sidecar_path)!r}: load() needs the JSON file that "
            "dwconv_tvm.export / `dwconv-tvm compile` writes beside the library."
        )
    # dlopen of a truncated or swapped library can kill the process, so check the bytes first.
    if sidecar.get("sha256") != file_digest(path):
        raise ValueError(f"The library {str(path)!r} does not match its sidecar (checksum differs).")
    return sidecar


def load(path: str | Path) -> CompiledOp:
    """Loads an exported kernel as a callable op, checked against its sidecar.

    The op checks every call's shapes and dtypes against the exported spec (clear
    ValueError/TypeError on a mismatch). Needs only the TVM runtime, not a compiler.

    Args:
        path: The library written by `dwconv_tvm.export` or `dwconv-tvm compile`.

    Returns:
        A `CompiledOp`.

    Raises:
        ValueError: If the library or its sidecar is missing, damaged or mismatched.
        RuntimeError: If the library was built for hardware this machine lacks.
    """
    path = Path(path)
    sidecar = read_sidecar(path)
    try:
        spec = DepthwiseSpec.from_dict(sidecar["spec"])
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"The sidecar of {str(path)!r} holds an invalid spec: {err}") from None
    if path.suffix == ".tar":
        raise ValueError(
            f"{str(path)!r} is an object archive for another architecture ({sidecar['target']}); "
            "link and load it on that device."
        )
    target = str(sidecar["target"])
    return CompiledOp(load_library(path, target), spec, target, str(sidecar.get("schedule", "unknown")), path)
