"""Plain MetaSchedule with a full budget vs the shipped tuning records, on one layer.

Runs `tvm.s_tir.meta_schedule.tune_tir` as it comes (its own generated search space, XGBoost
cost model, its local runner; only the builder gets `dwconv_tvm.tuning`'s build function, since
the stock one times out on 2 cores) for N trials, then times its best schedule and the one
`dwconv_tvm.compile` would use, interleaved, as `CompiledOp` calls kernels, and prints one JSON
line. Run from the repository root:

    .venv/bin/python benchmarks/probes/plain_metaschedule.py 28 192 3 1 --trials 512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import s_tir  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

from dwconv_tvm import tuning  # noqa: E402
from dwconv_tvm.build import schedule_for  # noqa: E402
from dwconv_tvm.compute import depthwise_module  # noqa: E402
from dwconv_tvm.reference import depthwise_reference  # noqa: E402
from dwconv_tvm.spec import DepthwiseSpec  # noqa: E402
from dwconv_tvm.targets import resolve_target  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("size", "channels", "kernel", "stride"):
        parser.add_argument(name, type=int)
    parser.add_argument("--trials", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    spec = DepthwiseSpec.from_keras((1, args.size, args.size, args.channels), kernel_size=args.kernel,
                                    strides=args.stride, padding="same")
    target = resolve_target("host")
    mod = depthwise_module(spec)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="plain-ms-") as work_dir:
        database = ms.tune_tir(mod, target, work_dir, max_trials_global=args.trials,
                               builder=ms.builder.LocalBuilder(f_build=tuning._f_build, timeout_sec=60))
    minutes = (time.monotonic() - start) / 60
    (best,) = database.get_top_k(database.commit_workload(mod), 1)
    sch = s_tir.Schedule(mod)
    best.trace.apply_to_schedule(sch, remove_postproc=False)
    ours_mod, ours_name = schedule_for(spec, target)
    kernels = {"plain_ms": tvm.tirx.build(sch.mod, target=target)["main"],
               "ours": tvm.tirx.build(ours_mod, target=target)["main"]}
    rng = np.random.default_rng(0)
    x, kernel, bias = (rng.standard_normal(shape).astype(np.float32)
                       for shape in (spec.input_shape, spec.kernel_shape, spec.bias_shape))
    expected = depthwise_reference(spec, x, kernel, bias)
    samples: dict[str, list[float]] = {name: [] for name in kernels}
    for r in range(args.rounds):
        for name in list(kernels)[:: -1 if r % 2 else 1]:
            out = np.empty(spec.output_shape, np.float32)
            samples[name].append(statistics.mean(tuning._time_calls(kernels[name], [x, kernel, bias, out])) * 1e6)
            np.testing.assert_allclose(out, expected, atol=1e-3)
    us = {name: statistics.median(v) for name, v in samples.items()}
    print(json.dumps({"spec": spec.key, "trials": args.trials, "tuning_minutes": round(minutes, 1),
                      "plain_ms_us": round(us["plain_ms"], 1), "ours_us": round(us["ours"], 1),
                      "ours_schedule": ours_name, "ours_speedup": round(us["plain_ms"] / us["ours"], 2)}))


if __name__ == "__main__":
    main()
