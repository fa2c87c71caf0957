"""Every point of a CPU template's knob space against a reference output."""

import numpy as np


def assert_every_knob_combination_matches(spec, algorithm, target, args, want, min_space=2, last_decision=None):
    """Builds the CPU template of `spec` (computed with `algorithm`) at every knob combination
    for `target` (as `compile` builds: with the prefetches the schedule asks for), runs each on
    `args` (inputs, without the output) and compares with `want`.

    `last_decision`, if given, keeps only the combinations whose last knob takes that decision.

    Returns:
        How many combinations were checked (at least `min_space`).
    """
    import tvm
    from tvm import s_tir

    from dwconv_tvm import prefetch
    from dwconv_tvm.compute import depthwise_module
    from dwconv_tvm.schedules import cpu
    from dwconv_tvm.schedules.common import forced_knobs, knob_space

    def scheduled():
        sch = s_tir.Schedule(depthwise_module(spec, algorithm))
        cpu.schedule(sch, spec, target)
        return sch

    space = [d for d in knob_space(scheduled) if last_decision is None or d[-1] == last_decision]
    assert len(space) >= min_space
    for decisions in space:
        with forced_knobs(decisions) as plan:
            sch = scheduled()
        got = np.empty(spec.output_shape, spec.dtype)
        tvm.compile(prefetch.apply(sch.mod), target=target).mod["main"](*args, got)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(plan.values))
    return len(space)
