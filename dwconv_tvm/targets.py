"""Target names -> `tvm.target.Target`, and the key that names a target's kernels and logs.

TVM 0.27 targets are JSON dicts. CPU targets carry `num-cores` (MetaSchedule needs it) and an
`mcpu`, which decides the SIMD width the schedules vectorize for.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

TargetLike = Any  # str | dict | tvm.target.Target


def host_cores() -> int:
    """Cores this process may run on (physical cores when psutil can tell)."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:  # psutil is a dependency; this only guards odd installs
        physical = None
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(physical or available or 1, available or 1))


def configure_host_threads() -> None:
    """Sets TVM's CPU thread-pool defaults unless the user already chose (environment variables,
    read when the pool first starts).

    - `TVM_NUM_THREADS` = usable cores: TVM's default halves `hardware_concurrency()` on x86 to
      skip hyper-threads, which on a 2-core VM means one worker and a slow parallel launch.
    - `TVM_THREAD_POOL_SPIN_COUNT` = 10000: with TVM's default, idle workers keep spinning and
      yielding long after a call, which stalled the next PyTorch (OpenMP) call by ~16 ms per call
      here and even slowed back-to-back calls of our own kernels (8.9 -> 7.1 us on 7x7x960).
    """
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(host_cores())
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "10000")


@functools.lru_cache(maxsize=1)
def host_target_dict() -> dict:
    """The JSON dict of the `host` target: this machine's CPU model and usable cores."""
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": host_cores()}


# name -> (what it is, its TVM target dict; None: detected here)
NAMED_TARGETS: dict[str, tuple[str, dict | None]] = {
    "host": ("this machine's CPU: detected model (mcpu) and usable core count", None),
    "x86-64-avx2": ("any x86-64 CPU with AVX2 and FMA (Haswell, Zen and later)",
                    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}),
    "x86-64-avx512": ("x86-64 with AVX-512 (Skylake-SP, Ice Lake, Sapphire Rapids, Zen 4)",
                      {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}),
    "aarch64": ("64-bit Arm Linux with NEON, Cortex-A72 class (Raspberry Pi 4, Graviton 1), cross-compiled",
                {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}),
    "cuda": ("NVIDIA GPU, sm_80 unless an arch is given (`--arch sm_90`, or 'cuda:sm_90')",
             {"kind": "cuda", "arch": "sm_80"}),
}


def named_target(name: str, arch: str | None = None) -> dict | None:
    """The TVM target dict of a named target (`cuda:sm_90` names an arch), or None.

    Args:
        name: One of `NAMED_TARGETS`, or `cuda:<arch>`.
        arch: A CUDA arch (`sm_90`) overriding the named one.

    Returns:
        A new dict, or None if `name` is not a named target.

    Raises:
        ValueError: If `arch` is given for a CPU target or is not of the form `sm_XX`.
    """
    base, _, named_arch = name.partition(":")
    if base not in NAMED_TARGETS or (named_arch and base != "cuda"):
        return None
    arch = arch or named_arch or None
    if arch is not None and (base != "cuda" or not arch.startswith("sm_") or not arch[3:].isdigit()):
        raise ValueError(f"`arch` must be a CUDA arch such as 'sm_90', for the cuda target. Received: {arch!r}")
    found = NAMED_TARGETS[base][1]
    target = host_target_dict() if found is None else dict(found)
    if arch is not None:
        target["arch"] = arch
    return target


@functools.lru_cache(maxsize=64)
def _resolve_cached(text: str):
    import tvm

    try:
        return tvm.target.Target(json.loads(text))
    except Exception as err:  # TVM raises its own error types for bad targets
        raise ValueError(f"Invalid `target`: {text}. TVM said: {str(err).splitlines()[-1]}") from None


def resolve_target(target: TargetLike = "host"):
    """Turns a target name, JSON dict or string, or `tvm.target.Target` into a Target.

    Args:
        target: A named target (`NAMED_TARGETS`: `"host"`, `"x86-64-avx2"`, `"x86-64-avx512"`,
            `"aarch64"`, `"cuda"`, `"cuda:sm_90"`), a TVM target string or tag, a JSON dict
            (`{"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 4}`), its JSON text, or a
            `tvm.target.Target`.

    Returns:
        The `tvm.target.Target`.

    Raises:
        ValueError: If TVM does not accept the target.
        TypeError: If `target` is of another type.
    """
    import tvm

    if target is None:
        target = "host"
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, str):
        named = named_target(target)
        if named is not None:
            target = named
        elif target.lstrip().startswith("{"):
            try:
                target = json.loads(target)
            except json.JSONDecodeError as err:
                raise ValueError(f"Invalid `target` JSON: {target!r} ({err})") from None
        else:
            try:
                return tvm.target.Target(target)
            except Exception as err:
                raise ValueError(
                    f"Invalid `target`: {target!r}. Expected a named target ({', '.join(NAMED_TARGETS)}), "
                    f"a TVM target string or tag, or a JSON dict. TVM said: {str(err).splitlines()[-1]}"
                ) from None
    if isinstance(target, dict):
        return _resolve_cached(json.dumps(target, sort_keys=True))
    raise TypeError(
        "`target` must be a name, a JSON dict or a tvm.target.Target. "
        f"Received: target={target!r} of type {type(target).__name__}"
    )


def target_key(target: TargetLike) -> str:
    """A short, file-name-safe key naming the hardware: `llvm-znver4`, `cuda-sm_90`.

    Kernels and tuning records are only valid for the hardware they were made for, so caches
    and logs are partitioned by this key (core count and other attributes go in the full
    target text that the kernel cache also hashes).

    Args:
        target: Anything `resolve_target` accepts.

    Returns:
        The key.
    """
    tgt = resolve_target(target)
    kind = tgt.kind.name
    attrs = tgt.attrs
    if kind == "cuda":
        return f"cuda-{attrs.get('arch', 'sm_unknown')}"
    cpu = attrs.get("mcpu") or "generic"
    triple = str(attrs.get("mtriple") or "")
    arch = triple.split("-")[0] if triple else ""
    key = f"{kind}-{cpu}" if not arch or arch == "x86_64" else f"{kind}-{arch}-{cpu}"
    return key.replace("/", "_").replace(" ", "_")


def target_text(target: TargetLike) -> str:
    """The canonical JSON text of a target, for hashing and sidecars."""
    return str(resolve_target(target))


# LLVM's names for the instruction-set extensions a CPU kernel may use -> NumPy's names for them
# in its runtime CPU detection (`__cpu_features__`, read from CPUID / HWCAP on this machine).
_LLVM_TO_NUMPY_FEATURES = {
    "sse4.1": "SSE41", "sse4.2": "SSE42", "popcnt": "POPCNT", "avx": "AVX", "avx2": "AVX2",
    "fma": "FMA3", "f16c": "F16C", "bmi": "BMI", "bmi2": "BMI2", "lzcnt": "LZCNT", "movbe": "MOVBE",
    "avx512f": "AVX512F", "avx512cd": "AVX512CD", "avx512bw": "AVX512BW", "avx512dq": "AVX512DQ",
    "avx512vl": "AVX512VL", "avx512vnni": "AVX512VNNI", "avx512ifma": "AVX512IFMA",
    "avx512vbmi": "AVX512VBMI", "avx512vbmi2": "AVX512VBMI2", "avx512bitalg": "AVX512BITALG",
    "avx512vpopcntdq": "AVX512VPOPCNTDQ", "avx512bf16": "AVX512BF16", "avx512fp16": "AVX512FP16",
    "fma4": "FMA4", "xop": "XOP", "neon": "ASIMD", "fullfp16": "ASIMDHP", "dotprod": "ASIMDDP",
    "sve": "SVE",
}


@functools.lru_cache(maxsize=64)
def required_cpu_features(text: str) -> tuple[str, ...]:
    """Instruction-set extensions that kernels for a CPU target may use, by NumPy's names.

    Exports record them in their sidecar, so that an app can check the CPU it runs on without
    TVM's compiler. GPU targets and installs without TVM's LLVM answer `()`.

    Args:
        text: The target's canonical JSON text (a sidecar's or `CompiledOp.target`).

    Returns:
        The names NumPy's `__cpu_features__` uses, e.g. `("AVX", "AVX2", "FMA3")`, sorted.
    """
    try:
        from tvm.target import codegen

        target = resolve_target(text)
        if target.kind.name != "llvm":
            return ()
        wanted = codegen.llvm_get_cpu_features(target)
    except (ImportError, AttributeError, ValueError):
        return ()
    return tuple(sorted({_LLVM_TO_NUMPY_FEATURES[f] for f in wanted if f in _LLVM_TO_NUMPY_FEATURES}))


@functools.lru_cache(maxsize=64)
def missing_cpu_features(text: str) -> tuple[str, ...]:
    """Instruction-set extensions that kernels for a CPU target may use and this CPU lacks.

    A library built for a newer CPU (`-mcpu=znver4` on a Haswell) loads fine and then dies of
    SIGILL on its first call, so loaders check this first. Targets of another architecture,
    GPU targets and installs without TVM's LLVM answer `()`; they fail (or not) elsewhere.

    Args:
        text: The target's canonical JSON text (a sidecar's or `CompiledOp.target`).

    Returns:
        NumPy's names of the missing extensions, e.g. `("AVX512F", "AVX512BW")`.
    """
    from .deploy import host_arch, target_arch

    try:
        from numpy._core._multiarray_umath import __cpu_features__ as host_features

        if target_arch(resolve_target(text)) != host_arch():
            return ()
    except (ImportError, ValueError):
        return ()
    # NumPy leaves out what it does not probe on this architecture: unknown is not missing.
    return tuple(n for n in required_cpu_features(text) if host_features.get(n) is False)
