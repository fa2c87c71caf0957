"""Pieces every schedule template uses: knobs, block lookup, register accumulation."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator


class KnobPlan:
    """Decisions forced on a template's knobs, in the order the template draws them, and what
    the template drew: `sizes[i]` candidates, decision index `chosen[i]`, value `values[i]`."""

    def __init__(self, prefix: tuple[int, ...] = ()):
        self.prefix = tuple(prefix)
        self.sizes: list[int] = []
        self.chosen: list[int] = []
        self.values: list[int] = []


_PLAN: contextvars.ContextVar[KnobPlan | None] = contextvars.ContextVar("dwconv_tvm_knob_plan", default=None)


@contextlib.contextmanager
def forced_knobs(prefix: tuple[int, ...] = ()) -> Iterator[KnobPlan]:
    """Within the block, the template's first `len(prefix)` knobs take the decision indices in
    `prefix` (the rest their defaults); the yielded plan records what was drawn."""
    plan = KnobPlan(prefix)
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


def knob_space(apply: Callable[[], None]) -> list[tuple[int, ...]]:
    """Every combination of decision indices of a template's knobs, the default one first.

    Args:
        apply: Runs the template once on a fresh schedule (later knobs may depend on earlier
            decisions, so the space is walked depth-first, one template run per tree node).

    Returns:
        Distinct tuples of decision indices, one entry per knob drawn.
    """
    with forced_knobs() as plan:
        apply()
    default = tuple(plan.chosen)
    found: list[tuple[int, ...]] = [default]
    pending: list[tuple[int, ...]] = [()]
    while pending:
        prefix = pending.pop()
        with forced_knobs(prefix) as plan:
            apply()
        if len(plan.sizes) == len(prefix):
            if prefix != default:
                found.append(prefix)
            continue
        pending.extend(prefix + (i,) for i in reversed(range(plan.sizes[len(prefix)])))
    return found


def knob(sch, candidates: list[int], default: int) -> int:
    """A categorical knob: the decision is `default` unless a tuner (or `forced_knobs`) changes it.

    Args:
        sch: The schedule (concrete or traced).
        candidates: The values the tuner may choose from.
        default: The untuned decision (must be among `candidates`).

    Returns:
        The value decided for this schedule.
    """
    candidates = sorted(set(candidates))
    probs = [1.0 / len(candidates)] * len(candidates)
    index = candidates.index(default)
    plan = _PLAN.get()
    if plan is not None:
        position = len(plan.sizes)
        if position < len(plan.prefix):
            index = plan.prefix[position]
        plan.sizes.append(len(candidates))
        plan.chosen.append(index)
        plan.values.append(candidates[index])
    rv = sch.sample_categorical(candidates, probs, decision=index)
    return int(sch.get(rv))


def has_block(sch, name: str) -> bool:
    """Whether the function has a block named `name` (the `pad` stage exists only with padding)."""
    try:
        sch.get_sblock(name)
    except Exception:  # TVM raises its own error type for a missing block
        return False
    return True


def accumulate_in_registers(sch, loop, tile_loops: int, vectorize_innermost: bool, scope: str = "local"):
    """Moves the `depthwise` reduction under `loop` into registers: kernel taps outermost and
    unrolled, the `tile_loops` spatial loops of the tile inside (unrolled; the innermost
    vectorized if asked), zero-initialized before the taps.

    `scope` is where the tile lives before the compiler promotes it to registers: `local` on
    GPUs; CPUs pass `global`, because TVM 0.27 lowers a CPU `local` buffer to a
    TVMBackendAllocWorkspace call per parallel task (and LLVM cannot keep that memory in
    registers), while a `global` one under 1 KB becomes a stack slot that LLVM promotes.

    Returns:
        The reduction block (its update part; the init block is split off).
    """
    conv = sch.get_sblock("depthwise")
    sch.compute_at(conv, loop, preserve_unit_loops=True)
    if scope != "global":
        sch.set_scope(conv, 0, scope)
    loops = sch.get_loops(conv)
    spatial, (ry, rx) = loops[-2 - tile_loops : -2], loops[-2:]
    sch.reorder(ry, rx, *spatial)
    for loop_ in (ry, rx, *spatial[:-1]):
        sch.unroll(loop_)
    if vectorize_innermost:
        sch.vectorize(spatial[-1])
    else:
        sch.unroll(spatial[-1])
    sch.decompose_reduction(conv, ry)
    return conv
