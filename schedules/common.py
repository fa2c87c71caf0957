"""Pieces every schedule template uses: knobs, block lookup, register accumulation."""

from __future__ import annotations


def knob(sch, candidates: list[int], default: int) -> int:
    """A categorical knob: the decision is `default` unless a tuner changes it.

    Args:
        sch: The schedule (concrete or traced).
        candidates: The values the tuner may choose from.
        default: The untuned decision (must be among `candidates`).

    Returns:
        The value decided for this schedule.
    """
    candidates = sorted(set(candidates))
    probs = [1.0 / len(candidates)] * len(candidates)
    rv = sch.sample_categorical(candidates, probs, decision=candidates.index(default))
    return int(sch.get(rv))


def has_block(sch, name: str) -> bool:
    """Whether the function has a block named `name` (the `pad` stage exists only with padding)."""
    try:
        sch.get_sblock(name)
    except Exception:  # TVM raises its own error type for a missing block
        return False
    return True


def accumulate_in_registers(sch, loop, tile_loops: int, vectorize_innermost: bool):
    """Moves the `depthwise` reduction under `loop` into registers (`local` scope): kernel taps
    outermost and unrolled, the `tile_loops` spatial loops of the tile inside (unrolled; the
    innermost vectorized if asked), zero-initialized before the taps.

    Returns:
        The reduction block (its update part; the init block is split off).
    """
    conv = sch.get_sblock("depthwise")
    sch.compute_at(conv, loop, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
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
