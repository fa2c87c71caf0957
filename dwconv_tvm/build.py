"""spec + target -> scheduled PrimFunc -> `tvm.compile` -> `CompiledOp`, cached in memory and on disk.

The on-disk cache key hashes the spec, the full target text, the TVM version and a fingerprint
of our compute and schedule sources, so a second process reuses a kernel and a code change
never serves a stale one. Kernels are written atomically (see `cache.py`); a damaged cache
entry is reported with a warning and rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import warnings
from pathlib import Path

from . import cache, prefetch
from .runtime import CompiledOp
from .spec import DepthwiseSpec
from .targets import TargetLike, required_cpu_features, resolve_target, target_key

_PACKAGE_DIR = Path(__file__).resolve().parent
# (spec, target text) -> the op and the records generation it was looked up under.
_memory: dict[tuple[DepthwiseSpec, str], tuple[CompiledOp, int]] = {}
_lock = threading.RLock()


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the package and schedule sources: a superset of what shapes generated code, so
    an upgrade may recompile but never serves a stale kernel."""
    import dwconv_tvm.schedules as schedules_pkg

    files = sorted(_PACKAGE_DIR.glob("*.py")) + sorted(Path(schedules_pkg.__file__).parent.glob("*.py"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


def schedule_for(spec: DepthwiseSpec, target, use_records: bool = True):
    """The scheduled IRModule of `spec` for `target`, and the name of the schedule used:
    the best tuning record (user logs, then shipped logs), else the target's template default.

    Args:
        spec: The workload.
        target: A resolved `tvm.target.Target`.
        use_records: Consult tuning records (False: the template's default).

    Returns:
        `(IRModule, schedule_name)`; names are `default:<kind>` or `tuned:<source>:<hash>`.

    Raises:
        ValueError: If no schedule exists for the target's kind.
    """
    from tvm import s_tir

    from . import records
    from .compute import depthwise_module

    if use_records:
        found = records.best_record(spec, target)
        if found is not None:
            return found.schedule.mod, f"tuned:{found.source}:{records.schedule_fingerprint(found.schedule)}"
    rule = template_for(target)
    sch = s_tir.Schedule(depthwise_module(spec))
    rule.schedule(sch, spec, target)
    return sch.mod, f"default:{target.kind.name}"


def template_for(target):
    """The schedule template module of a resolved target's kind.

    Raises:
        ValueError: If no schedule exists for the target's kind.
    """
    from . import schedules

    rule = schedules.for_target(target)
    if rule is None:
        raise ValueError(
            f"No schedule for target kind '{target.kind.name}'. Supported kinds: "
            f"{sorted(schedules.RULES)}."
        )
    return rule


def kernel_path(spec: DepthwiseSpec, target, schedule_name: str, root: Path | None = None) -> Path:
    """Where the compiled kernel of `spec` for `target`, made by `schedule_name`, is cached."""
    root = Path(root) if root is not None else cache.cache_root()
    text = str(target)
    digest = hashlib.sha256(
        "\n".join([spec.key, text, schedule_name, _tvm_version(), code_fingerprint()]).encode()
    ).hexdigest()[:16]
    return root / "kernels" / target_key(target) / f"{spec.key}-{digest}.so"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_cached(path: Path, spec: DepthwiseSpec, target_text: str) -> CompiledOp | None:
    sidecar_path = path.with_suffix(".json")
    if not sidecar_path.exists() or not path.exists():
        return None
    sidecar = cache.read_json(sidecar_path)
    if sidecar is None:
        warnings.warn(f"Ignoring cache entry {path}: unreadable sidecar {sidecar_path.name}.", stacklevel=3)
        return None
    if sidecar.get("spec") != spec.to_dict() or sidecar.get("target") != target_text:
        warnings.warn(f"Ignoring cache entry {path}: it describes another kernel.", stacklevel=3)
        return None
    # dlopen of a truncated or altered library can kill the process (SIGBUS), so the bytes are
    # checked against what was written before TVM sees them.
    if sidecar.get("sha256") != file_digest(path):
        warnings.warn(f"Ignoring cache entry {path}: the library does not match its checksum.", stacklevel=3)
        return None
    return CompiledOp(load_library(path, target_text), spec, target_text, sidecar.get("schedule", "unknown"), path)


def checked_target(spec: DepthwiseSpec, target: TargetLike):
    """Validates the public entry points' arguments; returns the resolved target."""
    if not isinstance(spec, DepthwiseSpec):
        raise TypeError(f"`spec` must be a DepthwiseSpec. Received: {type(spec).__name__}")
    return resolve_target(target)


def build_executable(spec: DepthwiseSpec, target, scheduled: tuple | None = None):
    """Schedules and compiles `spec` for a resolved target; nothing is loaded or written.

    GPU targets get a generic LLVM host target for their launcher unless the target names
    one, so the library runs on any machine of that CPU architecture with that GPU.

    Args:
        spec: The workload.
        target: A resolved `tvm.target.Target`.
        scheduled: `schedule_for`'s result, when the caller already has it.

    Returns:
        `(tvm Executable, schedule_name)`.
    """
    import tvm

    mod, schedule_name = scheduled or schedule_for(spec, target)
    return tvm.compile(prefetch.apply(mod), target=with_llvm_host(target)), schedule_name


def with_llvm_host(target):
    """`target`, with a generic LLVM host for a GPU target's launch code unless it names one."""
    import tvm

    if target.kind.name == "llvm" or target.host is not None:
        return target
    return tvm.target.Target(target, host={"kind": "llvm"})


def write_library(executable, spec: DepthwiseSpec, target_text: str, schedule_name: str, path: Path,
                  fcompile=None) -> Path:
    """Writes the library and its JSON sidecar atomically (library first, sidecar last, so a
    sidecar always describes a complete library). The sidecar says what a runtime needs to
    call it: entry function, argument order, shapes, dtypes and layouts.

    Args:
        executable: What `build_executable` returned.
        spec: The workload.
        target_text: The canonical target text.
        schedule_name: The schedule it was made with.
        path: The library path; `.so` links a shared library, `.tar` packs the object files.
        fcompile: TVM's linker callback (a cross compiler), or None for the host's.

    Returns:
        `path`.
    """
    from . import __version__
    from .compute import kernel_arguments

    path = Path(path)
    extra = {} if fcompile is None else {"fcompile": fcompile}
    cache.atomic_write(path, lambda tmp: executable.export_library(str(tmp), **extra), suffix=path.suffix or ".so")
    cache.atomic_write_json(
        path.with_suffix(".json"),
        {
            "format": 1,
            "library": path.name,
            "kind": "object-archive" if path.suffix == ".tar" else "shared-library",
            "sha256": file_digest(path),
            "spec": spec.to_dict(),
            "target": target_text,
            # NumPy's names: apps check the CPU with them before the first call (else SIGILL).
            "cpu_features": list(required_cpu_features(target_text)),
            "tvm_version": _tvm_version(),
            "dwconv_tvm_version": __version__,
            "schedule": schedule_name,
            "entry": CompiledOp.entry,
            "arguments": kernel_arguments(spec),
        },
    )
    return path


def load_library(path: Path, target_text: str):
    import tvm

    try:
        return tvm.runtime.load_module(str(path))
    except Exception as err:  # TVM reports a missing device runtime as a generic error
        raise RuntimeError(
            f"The kernel at {path} cannot run on this machine ({str(err).splitlines()[-1]}). "
            f"Target: {target_text}. Build it for another machine with dwconv_tvm.export(spec, path, target)."
        ) from None


def cuda_binary(spec: DepthwiseSpec, target: TargetLike) -> bytes:
    """Compiles the CUDA kernel of `spec` to a cubin with nvcc, for the target's arch.

    TVM 0.27 libraries carry CUDA kernels as source that the CUDA runtime compiles when the
    library is loaded on the GPU machine; this ahead-of-time nvcc build checks, without a GPU,
    that the generated source is valid for the architecture (and lets ptxas report resources).

    Returns:
        The cubin (an ELF for the CUDA machine type).

    Raises:
        ValueError: If the target is not a CUDA target.
    """
    from tvm.support import nvcc

    tgt = resolve_target(target)
    if tgt.kind.name != "cuda":
        raise ValueError(f"cuda_binary needs a CUDA target. Received: {tgt}")
    executable, _ = build_executable(spec, tgt)
    with tgt:
        return bytes(nvcc.compile_cuda(executable.mod.imports[0].inspect_source(), "cubin", compiler="nvcc"))


def _build(spec: DepthwiseSpec, target, path: Path | None, scheduled: tuple) -> CompiledOp:
    executable, schedule_name = build_executable(spec, target, scheduled)
    target_text = str(target)
    if path is not None:
        try:
            write_library(executable, spec, target_text, schedule_name, path)
            return CompiledOp(load_library(path, target_text), spec, target_text, schedule_name, path)
        except OSError as err:
            # A read-only home or a full disk (containers, serverless apps): the layer still
            # runs, compiling in each new process.
            warnings.warn(
                f"The kernel cache in {path.parent.parent} cannot be written ({err.strerror or err}): "
                f"kernels are compiled in memory only. Set {cache.CACHE_ENV} to a writable folder to "
                "keep them across processes.", stacklevel=4,
            )
    return CompiledOp(executable.mod, spec, target_text, schedule_name)


def compile(spec: DepthwiseSpec, target: TargetLike = "host", *, use_cache: bool = True) -> CompiledOp:  # noqa: A001
    """Compiles `spec` for `target`, reusing a cached kernel when one exists.

    Args:
        spec: The workload.
        target: `"host"`, a TVM target string/tag/JSON dict, or a `tvm.target.Target`.
        use_cache: Read and write the on-disk kernel cache (the in-memory cache is always used).

    Returns:
        The callable `CompiledOp`.

    Raises:
        TypeError: If `spec` is not a `DepthwiseSpec`.
        ValueError: If the target is invalid or unsupported.
    """
    from .records import generation

    tgt = checked_target(spec, target)
    target_text = str(tgt)
    key = (spec, target_text)
    op, seen = _memory.get(key, (None, -1))
    if op is not None and seen == generation():
        return op
    with _lock:
        op, seen = _memory.get(key, (None, -1))
        current = generation()
        if op is None or seen != current:  # new, or the logs changed since (tuning in this process)
            scheduled = schedule_for(spec, tgt)  # the tuned record it picks is part of the key
            if op is None or op.schedule != scheduled[1]:
                path = kernel_path(spec, tgt, scheduled[1]) if use_cache else None
                op = (_load_cached(path, spec, target_text) if path is not None else None) or _build(
                    spec, tgt, path, scheduled
                )
            _memory[key] = (op, current)
    return op
