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

from . import cache
from .runtime import CompiledOp
from .spec import DepthwiseSpec
from .targets import TargetLike, resolve_target, target_key

_PACKAGE_DIR = Path(__file__).resolve().parent
_memory: dict[tuple[DepthwiseSpec, str], CompiledOp] = {}
_lock = threading.RLock()


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of every source file that shapes generated code."""
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


def schedule_for(spec: DepthwiseSpec, target):
    """The scheduled IRModule of `spec` for `target`, and the name of the schedule used.

    Args:
        spec: The workload.
        target: A resolved `tvm.target.Target`.

    Returns:
        `(IRModule, schedule_name)`.

    Raises:
        ValueError: If no schedule exists for the target's kind.
    """
    import tvm
    from tvm import s_tir

    from . import schedules
    from .compute import depthwise_primfunc

    rule = schedules.for_target(target)
    if rule is None:
        raise ValueError(
            f"No schedule for target kind '{target.kind.name}'. Supported kinds: "
            f"{sorted(schedules.RULES)}."
        )
    sch = s_tir.Schedule(tvm.IRModule({"main": depthwise_primfunc(spec)}))
    rule.schedule(sch, spec, target)
    return sch.mod, f"default:{target.kind.name}"


def kernel_path(spec: DepthwiseSpec, target, root: Path | None = None) -> Path:
    """Where the compiled kernel of `spec` for `target` is cached."""
    root = Path(root) if root is not None else cache.cache_root()
    text = str(target)
    digest = hashlib.sha256(
        "\n".join([spec.key, text, _tvm_version(), code_fingerprint()]).encode()
    ).hexdigest()[:16]
    return root / "kernels" / target_key(target) / f"{spec.key}-{digest}.so"


def _file_digest(path: Path) -> str:
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
    if sidecar.get("sha256") != _file_digest(path):
        warnings.warn(f"Ignoring cache entry {path}: the library does not match its checksum.", stacklevel=3)
        return None
    import tvm

    try:
        module = tvm.runtime.load_module(str(path))
    except Exception as err:  # a truncated or foreign .so: rebuild rather than fail
        warnings.warn(f"Ignoring unloadable cache entry {path}: {err}", stacklevel=3)
        return None
    return CompiledOp(module, spec, target_text, sidecar.get("schedule", "unknown"), path)


def _build(spec: DepthwiseSpec, target, path: Path | None) -> CompiledOp:
    import tvm

    mod, schedule_name = schedule_for(spec, target)
    executable = tvm.compile(mod, target=target)
    target_text = str(target)
    if path is None:
        return CompiledOp(executable.mod, spec, target_text, schedule_name)
    cache.atomic_write(path, lambda tmp: executable.export_library(str(tmp)), suffix=".so")
    cache.atomic_write_json(
        path.with_suffix(".json"),
        {
            "sha256": _file_digest(path),
            "spec": spec.to_dict(),
            "target": target_text,
            "tvm_version": _tvm_version(),
            "schedule": schedule_name,
            "entry": CompiledOp.entry,
        },
    )
    module = tvm.runtime.load_module(str(path))
    return CompiledOp(module, spec, target_text, schedule_name, path)


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
    if not isinstance(spec, DepthwiseSpec):
        raise TypeError(f"`spec` must be a DepthwiseSpec. Received: {type(spec).__name__}")
    tgt = resolve_target(target)
    target_text = str(tgt)
    key = (spec, target_text)
    op = _memory.get(key)
    if op is not None:
        return op
    with _lock:
        op = _memory.get(key)
        if op is None:
            path = kernel_path(spec, tgt) if use_cache else None
            op = (_load_cached(path, spec, target_text) if path is not None else None) or _build(
                spec, tgt, path
            )
            _memory[key] = op
    return op
