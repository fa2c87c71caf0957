"""Hand-written per-target schedules, one module per target family.

Each module exposes `schedule(sch, spec, target)`, applied to a `tvm.s_tir.Schedule` of
`dwconv_tvm.compute.depthwise_primfunc(spec)`. Installed as `dwconv_tvm.schedules`.
"""

from __future__ import annotations

from types import ModuleType

from . import cpu, cuda

RULES: dict[str, ModuleType] = {"llvm": cpu, "cuda": cuda}


def for_target(target) -> ModuleType | None:
    """The schedule module for a `tvm.target.Target`, or None if its kind has none."""
    return RULES.get(target.kind.name)
