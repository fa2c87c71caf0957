"""Wall-clock timing of Python calls, shared by the tuner's measurements and the benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable


def seconds_per_call(fn: Callable[[], object], min_seconds: float, min_calls: int = 1) -> float:
    """Mean seconds per call of `fn()`, over as many back-to-back calls as fill `min_seconds`.

    Args:
        fn: The call to time, without arguments.
        min_seconds: Keep calling until this much time has passed.
        min_calls: Keep calling until at least this many calls have run.

    Returns:
        Elapsed seconds divided by the number of calls.
    """
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= min_calls and elapsed >= min_seconds:
            return elapsed / calls


def alternating_order(count: int, rounds: int) -> list[int]:
    """Indices of `count` candidates over `rounds` interleaved rounds, every other round in
    reverse, so that no candidate always runs first (or always after the same neighbour).

    Args:
        count: How many candidates.
        rounds: How many rounds.

    Returns:
        `count * rounds` indices, round after round.
    """
    forward = list(range(count))
    return [i for r in range(rounds) for i in (forward if r % 2 == 0 else forward[::-1])]
