"""Auto-tuning with MetaSchedule into the target's log folder (see `records` for where records
live and which one `compile` applies).

Per spec: the template's knob combinations are measured first (its default first; over both
algorithms where Winograd applies, `compute.algorithms`), then MetaSchedule's evolutionary
search runs over the template of the sweep's winning algorithm together with MetaSchedule's
generated space, and a final check times the fastest schedules and the default side by side;
its verdict is what `compile` applies, so a tuned kernel is never slower than the untuned one
as measured side by side.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import linecache
import logging
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from . import cache, prefetch
from .compute import algorithms, depthwise_module
from .records import RECORDS, WORKLOADS, _mean, forget_loaded, record_choice, repair, trace_id, user_log_dir
from .runtime import aligned_copy
from .spec import DepthwiseSpec
from .targets import TargetLike, resolve_target, target_key
from .timing import alternating_order, seconds_per_call
from .tracker import DeviceWatch, check_tracker, parse_tracker


def _f_build(mod, target, _params=None):
    """Every build of a candidate, LocalBuilder's and the in-process measurer's: with the
    prefetches its schedule asks for. (LocalBuilder's default build imports tensor intrinsics
    in every fresh worker, which takes longer than its timeout on a 2-core machine: see
    `_import_tensor_intrinsics`.)"""
    import tvm

    return tvm.tirx.build(prefetch.apply(mod), target=target)


# One timing protocol for every record: 3 repeats of at least 40 ms each; a record's latency is
# their mean. On CPUs each repeat times Python calls of the kernel on NumPy arrays, as
# `CompiledOp` calls it: TVM's time_evaluator loops in C++ with the thread pool kept hot, and
# ranked some schedules that wake the pool differently as faster than they are in use.
EVALUATOR = {"number": 1, "repeat": 3, "min_repeat_ms": 40}
UNLIMITED = 1 << 30  # trials when only a time budget is given
CONFIRMED = 3  # the search's best new candidates, re-measured with the sweep's protocol
FINALISTS = 4  # the fastest distinct records timed beside the default in the final check
# Records per algorithm timed once more, back to back, to pick those finalists: recorded
# latencies come from different phases of a shared machine (znver4, 28x28x256: a record kept out
# of the finalists by its 20.3 us, measured in a slow phase, ran 15.3 us against the chosen
# one's 19.5 side by side).
PRESCREEN = 8
# Template combinations timed side by side per group in the sweep: records measured seconds
# apart on a shared machine do not compare (one batch-8 sweep here recorded the default at
# 2190 us and a combination at 1105 us that both run in 420-690 us side by side).
SWEEP_GROUP = 12
FINAL_ROUNDS = 5  # its rounds; each times every finalist once, in alternating order
# A tuned schedule replaces the default only if it is faster by more than this in the final
# check: closer than that is noise on a shared machine, and the default is the tested one.
DEFAULT_MARGIN = 0.02
# The final check warns when it times the default this much slower than its record: the machine
# is in a slow phase (a shared VM here ran 1.5x slower for minutes), which slows some schedules
# more than others (channel-parallel ones more than row-parallel), so the verdict may be off.
SLOW_PHASE_RATIO = 1.25
# The search's candidates per round, and the population its evolutionary search breeds them
# from: MetaSchedule's own ratio (512 for 64). Its default of 512 for our 8 made a round take
# 15-20 s against 7-10 s (znver4, 2 cores, 112x112x32 and 28x28x192), no better candidates.
SEARCH_ROUND = 8
SEARCH_POPULATION = 8 * SEARCH_ROUND


def _time_calls(fn, args, repeat: int = EVALUATOR["repeat"]) -> list[float]:
    """Seconds per call of `fn(*args)` after three untimed calls, one mean per window of
    `EVALUATOR`'s length, `repeat` windows."""
    for _ in range(3):
        fn(*args)
    return [seconds_per_call(lambda: fn(*args), EVALUATOR["min_repeat_ms"] / 1e3) for _ in range(repeat)]


class _InProcess:
    """Builds and times candidates in this process, reusing one set of arguments: ~0.1 s to
    build and ~0.15 s to time one candidate, where a round trip through MetaSchedule's worker
    pools costs seconds. Used for the template's own (tested) schedules, and to re-measure
    search candidates that already ran in MetaSchedule's sandboxed runner."""

    def __init__(self, mod, target):
        import numpy as np
        import tvm
        from tvm.s_tir import meta_schedule as ms

        from .build import with_llvm_host

        self.target = with_llvm_host(target)
        self.on_cpu = target.kind.name == "llvm"
        self.device = tvm.cpu() if self.on_cpu else tvm.device(target.kind.name, 0)
        rng = np.random.default_rng(0)
        # Aligned as the layer's weights and framework tensors are (and as MetaSchedule's runner
        # allocates): NumPy's 16-byte alignment would slow some candidates more than others.
        arrays = [
            aligned_copy(rng.uniform(-1, 1, [int(d) for d in info.shape]), str(info.dtype))
            for info in ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        ]
        self.args = arrays if self.on_cpu else [tvm.runtime.tensor(a, self.device) for a in arrays]
        self._built: dict = {}  # module -> library, of the last `side_by_side` call

    def __call__(self, mods) -> list[list[float] | None]:
        results = []
        for mod in mods:
            lib = _f_build(mod, self.target)
            if self.on_cpu:
                results.append(_time_calls(lib["main"], self.args))
            else:
                timer = lib.time_evaluator("main", self.device, **EVALUATOR)
                results.append([float(t) for t in timer(*self.args).results])
        return results

    def side_by_side(self, mods, rounds: int) -> list[list[float] | None]:
        """Seconds per call of each module, one sample per round; every round times each module
        once, in alternating order, so that all of them see the same phases of a noisy machine."""
        # The final check times its finalists right after prescreening them: the same module
        # objects, built once (modules hash and compare by identity).
        built = {mod: self._built[mod] if mod in self._built else _f_build(mod, self.target) for mod in mods}
        self._built = built
        libs = [built[mod] for mod in mods]
        if self.on_cpu:
            timers = [lambda fn=lib["main"]: _time_calls(fn, self.args, repeat=1)[0] for lib in libs]
        else:
            evaluators = [lib.time_evaluator("main", self.device, **{**EVALUATOR, "repeat": 1}) for lib in libs]
            timers = [lambda ev=ev: float(ev(*self.args).results[0]) for ev in evaluators]
        samples: list[list[float] | None] = [[] for _ in mods]
        for i in alternating_order(len(timers), rounds):
            samples[i].append(timers[i]())
        return samples


class _ThroughRunner:
    """Builds with MetaSchedule's builder and measures with its runner (a TVM RPC fleet)."""

    def __init__(self, mod, target, builder, runner):
        from tvm.s_tir import meta_schedule as ms

        self.target, self.builder, self.runner = target, builder, runner
        self.args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        self.device = "cpu" if target.kind.name == "llvm" else target.kind.name
        # module -> build result of the last `side_by_side` call; what is left goes with the object.
        self._kept: dict = {}
        weakref.finalize(self, _remove_artifacts, self._kept.values())

    def __call__(self, mods) -> list[list[float] | None]:
        built = self.builder.build([self._input(mod) for mod in mods])
        try:
            return self._run(built, list(range(len(mods))))
        finally:
            _remove_artifacts(built)

    def side_by_side(self, mods, rounds: int) -> list[list[float] | None]:
        """Seconds per call of each module, one sample (a runner measurement's mean) per round,
        rounds in alternating order; None for a module that failed in any round. Built once,
        and the modules of the previous call are not built again (the final check times its
        finalists right after its prescreen timed them)."""
        new = [mod for mod in dict.fromkeys(mods) if mod not in self._kept]
        current = {mod: self._kept[mod] for mod in mods if mod in self._kept}
        current.update(zip(new, self.builder.build([self._input(mod) for mod in new]) if new else []))
        _remove_artifacts(result for mod, result in self._kept.items() if mod not in current)
        self._kept.clear()
        self._kept.update(current)
        order = alternating_order(len(mods), rounds)
        samples: list[list[float] | None] = [[] for _ in mods]
        for i, run_secs in zip(order, self._run([current[mod] for mod in mods], order)):
            if samples[i] is not None:
                samples[i] = samples[i] + [_mean(run_secs)] if run_secs else None
        return samples

    def _input(self, mod):
        from tvm.s_tir import meta_schedule as ms

        return ms.builder.BuilderInput(mod, self.target)

    def _run(self, built, order: list[int]) -> list[list[float] | None]:
        """Measures the built modules in `order` (the runner works through its inputs one at a
        time); returns the run times of each entry of `order`, None where it failed."""
        from tvm.s_tir import meta_schedule as ms

        results: list[list[float] | None] = [None] * len(order)
        runnable = [k for k, i in enumerate(order) if not built[i].error_msg]
        futures = self.runner.run([
            ms.runner.RunnerInput(built[order[k]].artifact_path, self.device, self.args_info) for k in runnable
        ])
        for k, future in zip(runnable, futures):
            result = future.result()
            if not result.error_msg:
                results[k] = [float(t) for t in result.run_secs]
        return results


@functools.cache
def _watched_runner_class():
    """MetaSchedule runner classes are made by TVM's `derived_object` (which needs TVM), so the
    watched runner is defined on first use."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    @derived_object
    class WatchedFuture(PyRunnerFuture):
        def __init__(self, inner, watch: DeviceWatch):
            super().__init__()
            self.inner, self.watch = inner, watch

        def done(self) -> bool:
            return self.watch.lost is not None or self.inner.done()

        def result(self):
            if self.inner is not None and self.watch.wait(self.inner.done):
                return self.inner.result()
            return RunnerResult(None, error_msg=f"RPC device lost: {self.watch.lost}")

    @derived_object
    class WatchedRunner(PyRunner):
        """An RPC runner whose futures wait under a `DeviceWatch`: its own wait on the tracker
        has no end when the device is gone."""

        def __init__(self, inner, watch: DeviceWatch):
            super().__init__()
            self.inner, self.watch = inner, watch

        def run(self, runner_inputs):
            if self.watch.lost is not None:  # the inner runner's workers are ended
                return [WatchedFuture(None, self.watch) for _ in runner_inputs]
            return [WatchedFuture(f, self.watch) for f in self.inner.run(runner_inputs)]

    return WatchedRunner


def _end_workers(pool) -> None:
    """Ends a TVM `PopenPoolExecutor` whose worker waits at the tracker for a device that is
    gone: its queued jobs are cancelled (each would start a worker that waits the same way),
    then its worker processes killed. The threads reading from them see the end of their pipes
    and clean up themselves; `pool.shutdown` would close those pipes under the reading threads,
    which blocks on the readers' locks (TVM 0.27)."""
    pool._threadpool.shutdown(wait=False, cancel_futures=True)
    for worker in list(pool._worker_map.values()):
        process = worker._proc
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()
    pool._threadpool.shutdown(wait=True)
    # Marked shut down here: left to the pool's __del__, the shutdown can run in one of its own
    # threads (a garbage collection there) and fail to join it.
    pool.shutdown()


def _remove_artifacts(built) -> None:
    """Deletes the artifacts of MetaSchedule build results (each in a temporary folder of its own)."""
    for result in built:
        if result.artifact_path:
            shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)


def _outer_frames(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack()` without its file lookups: the same frames, names, line numbers and
    current source line (`context` is accepted and ignored: one line is what TVMScript reads).

    `inspect.stack` resolves every frame's module, and for a frame of frozen import machinery
    that means a scan of all of `sys.modules` (about 2000 once TVM is imported)."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals)
        frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                        [line] if line else None, 0 if line else None))
        frame = frame.f_back
    return frames


def _import_tensor_intrinsics() -> None:
    """Imports `tvm.s_tir.tensor_intrin`, which MetaSchedule's TuneContext imports first thing.

    The module parses 248 TVMScript functions, and the parser calls `inspect.stack()` twice for
    each: 26-29 s on a 2-core znver4 VM, 95% of it in `inspect.getmodule`. With `_outer_frames`
    standing in for the duration of the import, it takes a second or two; the parser reads only
    the frames, their locals and their current lines, which `_outer_frames` gives alike."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    stack = inspect.stack
    inspect.stack = _outer_frames
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = stack


@contextlib.contextmanager
def _metaschedule_logging():
    """Runs MetaSchedule with a clean logger of its own: it derives its logging config from the
    handlers already on its logger (an unnamed one, e.g. a test harness's, breaks it), prints a
    table per round to the console unless the logger level says otherwise, and leaves a file
    handler into the (deleted) work folder behind."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    saved_handlers, saved_level, saved_propagate = logger.handlers[:], logger.level, logger.propagate
    logger.handlers = []
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers = saved_handlers
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate


class _Progress:
    """Trials, best latency and the tuning curve of one spec; draws its progress line (one per
    pass of the tuner over the specs) and notes under it."""

    def __init__(self, label: str, total: int, deadline: float, stream: TextIO | None, stop: threading.Event):
        self.label, self.total, self.deadline, self.stream, self.stop = label, total, deadline, stream, stop
        self.done, self.best, self.start = 0, math.inf, time.monotonic()
        self.curve: list[tuple[int, float, float]] = []  # (trial, seconds working on it, best latency)
        self.paused_at: float | None = None
        self.line_open = False  # a progress line is drawn and not yet ended

    def pause(self) -> None:
        """Ends this pass's line; the time until `resume` does not count as spent on the spec."""
        self.paused_at = time.monotonic()
        if self.line_open:
            self.stream.write("\n")
            self.stream.flush()
            self.line_open = False

    def resume(self, deadline: float) -> None:
        """Continues the spec in a later pass, with a new deadline."""
        if self.paused_at is not None:
            self.start += time.monotonic() - self.paused_at
            self.paused_at = None
        self.deadline = deadline

    def resume_from(self, latency: float) -> None:
        """Starts from the best record of an earlier run: the bar's and the curve's best so far
        (at trial 0) are that record's, not only what this run measures."""
        self.best = latency
        self.curve.append((0, 0.0, latency))

    def note(self, text: str) -> None:
        """A line under the progress line (under the spec's label if this pass drew none)."""
        if self.stream is not None:
            self.stream.write(f"\n    {text}" if self.line_open else f"{self.label}\n    {text}")
            self.stream.flush()
            self.line_open = True

    def expired(self) -> bool:
        """Past the spec's deadline, or the user asked to stop."""
        return self.stop.is_set() or time.monotonic() >= self.deadline

    def add(self, run_secs, counts: bool = True) -> None:
        """Records a measurement: a trial (`counts`), or a re-measurement of earlier trials."""
        self.done += counts
        if run_secs:
            self.best = min(self.best, _mean(run_secs))
        elapsed = time.monotonic() - self.start
        if self.best < math.inf:
            self.curve.append((self.done, elapsed, self.best))
        if self.stream is None or not self.done:
            return
        left_s = max(self.deadline - time.monotonic(), 0)
        if self.total >= UNLIMITED:  # a time budget only: the bar shows time
            eta, fraction, count = left_s, elapsed / max(elapsed + left_s, 1e-9), f"{self.done} trials"
        else:
            eta = min(elapsed / self.done * max(self.total - self.done, 0), left_s)
            fraction, count = min(self.done, self.total) / self.total, f"{min(self.done, self.total)}/{self.total} trials"
        filled = int(20 * fraction)
        best = f"{self.best * 1e6:.1f} us" if self.best < math.inf else "-"
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (20 - filled)}] {count}, best {best}, ETA {eta:.0f} s ")
        self.stream.flush()
        self.line_open = True


def _search_callback(progress: _Progress):
    """A MetaSchedule measure callback feeding the progress line, which also ends the search
    at the spec's deadline (MetaSchedule itself only knows trial counts)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for _ in runner_results:  # their runner times differently: latencies come from re-measuring
                progress.add(None)
            if progress.expired():
                task_scheduler.terminate_task(task_id)

    return Progress()


@contextlib.contextmanager
def _graceful_interrupt(stream: TextIO | None):
    """Turns the first Ctrl-C into a request to stop after the candidate being measured: raised
    inside TVM's C++ (a build, a timing run) it would surface as a bare RuntimeError. The
    second Ctrl-C interrupts at once. Yields the stop event; raises KeyboardInterrupt at the end
    if it was set."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if stream is not None:
            stream.write("\ninterrupt: stopping after the current measurement (Ctrl-C again to stop now)\n")
            stream.flush()

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
    if stop.is_set():
        raise KeyboardInterrupt("tuning interrupted; the records measured so far are kept")


@contextlib.contextmanager
def _exclusive(folder: Path, stream: TextIO | None):
    """Holds the folder's tuning lock. MetaSchedule numbers workloads by their line in the
    workload file, so two tuners appending to one database would cross their records; two
    tuners measuring on one machine would also skew each other's timings. The lock is an
    advisory `flock`, released by the OS if the holder dies."""
    import fcntl

    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if stream is not None:
                stream.write(f"waiting for another tuner using {folder}\n")
                stream.flush()
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _file_state(folder: Path) -> tuple:
    """Size and modification time of the database files: what tells another writer's work."""
    state = []
    for name in (WORKLOADS, RECORDS):
        try:
            stat = (folder / name).stat()
        except FileNotFoundError:
            state.append(None)
            continue
        state.append((stat.st_size, stat.st_mtime_ns))
    return tuple(state)


def _open_for_tuning(folder: Path):
    """The user's database, resumed: damaged lines dropped; a database that still cannot load
    is set aside (renamed, not deleted) with a warning and a new one started."""
    from tvm.s_tir import meta_schedule as ms

    repair(folder)

    def open_database():
        return ms.database.JSONDatabase(path_workload=str(folder / WORKLOADS), path_tuning_record=str(folder / RECORDS))

    try:
        return open_database()
    except Exception as err:  # foreign or inconsistent files
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name in (WORKLOADS, RECORDS):
            if (folder / name).exists():
                os.replace(folder / name, folder / f"{name}.unusable-{stamp}")
        warnings.warn(
            f"The tuning log {folder} could not be loaded ({str(err).splitlines()[-1]}); it was "
            f"renamed to *.unusable-{stamp} and a new one started.", stacklevel=3,
        )
        return open_database()


def _sweep(spec, mods, rule, target, database, workloads, measure, trials, progress, favored) -> tuple | None:
    """Measures the template's knob combinations over every algorithm of the spec (`mods`:
    algorithm -> module, direct first): the defaults first, then the combinations that won on
    earlier specs, then the rest, the algorithms taking turns, until `trials` or the deadline
    (the first group runs even past it, so every spec gets its default measured; a spec reached
    past the deadline gets only that). Each group of `SWEEP_GROUP` is timed side by side,
    `EVALUATOR["repeat"]` rounds in alternating order, so that its ranking does not follow the
    machine's phases, and committed as soon as it is measured.
    Returns `(algorithm, knob values)` of the fastest, if any."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from .schedules.common import forced_knobs, knob_space

    def scheduled(algorithm, decisions):
        sch = s_tir.Schedule(mods[algorithm])
        with forced_knobs(decisions) as plan:
            rule.schedule(sch, spec, target)
        return algorithm, sch, tuple(plan.values)

    measured = {str(r.trace) for w in workloads.values() for r in database.get_top_k(w, 1 << 30)}
    spaces = [
        [scheduled(algorithm, d) for d in knob_space(lambda mod=mod: rule.schedule(s_tir.Schedule(mod), spec, target))]
        for algorithm, mod in mods.items()
    ]
    rank = {key: i for i, key in enumerate(favored)}
    rests = [sorted(space[1:], key=lambda c: rank.get((c[0], c[2]), len(rank))) for space in spaces]
    interleaved = [c for turn in itertools.zip_longest(*rests) for c in turn if c is not None]
    candidates = [space[0] for space in spaces]
    candidates += sorted(interleaved, key=lambda c: rank.get((c[0], c[2]), len(rank)))  # stable: turns kept
    candidates = [c for c in candidates if str(c[1].trace) not in measured][:trials]
    args_info = ms.arg_info.ArgInfo.from_prim_func(mods["direct"]["main"])
    if not candidates:
        return None
    best, best_key = math.inf, None
    # A spec reached past its deadline gets its default alone.
    bounds = [0, *range(1 if progress.expired() else SWEEP_GROUP, len(candidates), SWEEP_GROUP), len(candidates)]
    for start, stop in zip(bounds, bounds[1:]):
        if progress.stop.is_set() or (start and progress.expired()):  # the first group runs even past the deadline
            break
        group = candidates[start:stop]
        for (algorithm, sch, values), run_secs in zip(group, measure.side_by_side([c[1].mod for c in group], EVALUATOR["repeat"])):
            progress.add(run_secs)
            if not run_secs:
                continue
            database.commit_tuning_record(
                ms.database.TuningRecord(sch.trace, workloads[algorithm], run_secs, target, args_info))
            if _mean(run_secs) < best:
                best, best_key = _mean(run_secs), (algorithm, values)
    return best_key


def _search(mod, rule, spec, target, database, workload, measure, builder, runner, trials, progress) -> None:
    """MetaSchedule's evolutionary search over the template's knobs together with its own
    generated space, warm-started from the records in the database. It runs on a scratch copy
    of the records (its runner times differently from the sweep); its best new candidates are
    then re-measured with the sweep's protocol and only those records are committed."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    def template(sch):
        rule.schedule(sch, spec, target)

    scratch = ms.database.MemoryDatabase()
    scratch_workload = scratch.commit_workload(mod)
    known = set()
    for record in database.get_top_k(workload, 64):
        known.add(str(record.trace))
        scratch.commit_tuning_record(ms.database.TuningRecord(
            record.trace, scratch_workload, record.run_secs, record.target, record.args_info))
    space = ms.space_generator.SpaceGeneratorUnion([
        ms.space_generator.ScheduleFn(template, sch_rules=[], postprocs="from-target", mutator_probs="from-target"),
        ms.space_generator.PostOrderApply(),
    ])
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), _search_callback(progress)]
    _import_tensor_intrinsics()
    with tempfile.TemporaryDirectory(prefix="dwconv-tvm-tune-") as work_dir, _metaschedule_logging():
        ms.tune_tir(
            mod, target, work_dir, max_trials_global=trials, num_trials_per_iter=min(trials, SEARCH_ROUND),
            builder=builder, runner=runner, database=scratch, space=space, measure_callbacks=callbacks,
            strategy=ms.search_strategy.EvolutionarySearch(population_size=SEARCH_POPULATION),
        )
    found = [r for r in scratch.get_top_k(scratch_workload, 1 << 30) if str(r.trace) not in known]
    args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    for record in found[:CONFIRMED]:
        sch = s_tir.Schedule(mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        (run_secs,) = measure([sch.mod])
        progress.add(run_secs, counts=False)
        if run_secs:
            database.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, run_secs, target, args_info))


def _final_check(spec, mods, rule, target, database, workloads, measure, folder: Path, progress) -> None:
    """Times the template's default (of the direct algorithm) and the fastest distinct records
    side by side and stores the verdict in the folder's `choices.json`: the fastest by median,
    unless the default is within `DEFAULT_MARGIN` of it. The records compared (`FINALISTS`,
    each algorithm's fastest among them) are the fastest of a prescreen that times each
    algorithm's `PRESCREEN` fastest records once, back to back. Warns (a progress note) when
    the default ran more than `SLOW_PHASE_RATIO` times slower than its fastest record."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    default = s_tir.Schedule(mods["direct"])
    rule.schedule(default, spec, target)
    ranked = sorted(((_mean(r.run_secs), a, r) for a, w in workloads.items() for r in database.get_top_k(w, 1 << 30)),
                    key=lambda entry: entry[0])
    recorded: dict[str, tuple] = {}  # trace_id -> (algorithm, its fastest record), fastest first
    for _, algorithm, record in ranked:
        recorded.setdefault(trace_id(record.trace), (algorithm, record))
    default_id = trace_id(default.trace)
    contenders = {}  # trace_id -> module: each algorithm's fastest records, by recorded latency
    for algorithm in dict.fromkeys(a for a, _ in recorded.values()):
        for tid in [t for t, (a, _) in recorded.items() if a == algorithm and t != default_id][:PRESCREEN]:
            sch = s_tir.Schedule(mods[algorithm])
            recorded[tid][1].trace.apply_to_schedule(sch, remove_postproc=False)
            contenders[tid] = sch.mod
    if len(contenders) > FINALISTS:
        # Ranked again by one measurement each, in this phase; one that failed goes last.
        once = measure.side_by_side(list(contenders.values()), 1)
        seconds = {tid: s[0] if s else math.inf for tid, s in zip(contenders, once)}
        contenders = {tid: contenders[tid] for tid in sorted(contenders, key=seconds.get)}
    finalists = {default_id: default.mod}
    # Each algorithm's fastest first: records of one algorithm may all have been measured in a
    # slower phase of the machine than the other's.
    leaders = [next(t for t in contenders if recorded[t][0] == algorithm)
               for algorithm in dict.fromkeys(recorded[t][0] for t in contenders)]
    for tid in [*leaders, *contenders]:
        if len(finalists) > FINALISTS:
            break
        finalists.setdefault(tid, contenders[tid])
    if len(finalists) < 2:
        return
    ids = list(finalists)
    samples = measure.side_by_side(list(finalists.values()), FINAL_ROUNDS)
    medians = {i: statistics.median(s) * 1e6 for i, s in zip(ids, samples) if s}
    if ids[0] not in medians:
        return
    fastest = min(medians, key=medians.get)
    chosen = fastest if medians[fastest] * (1 + DEFAULT_MARGIN) < medians[ids[0]] else ids[0]
    if chosen not in recorded:  # the default, if the sweep was cut off before it
        args_info = ms.arg_info.ArgInfo.from_prim_func(mods["direct"]["main"])
        database.commit_tuning_record(
            ms.database.TuningRecord(default.trace, workloads["direct"], samples[0], target, args_info))
    record_choice(folder, spec.key, chosen, medians, ids[0])
    others = min(v for i, v in medians.items() if i != ids[0]) if len(medians) > 1 else math.nan
    verdict = (f"the default stays, {medians[ids[0]]:.1f} us (fastest tuned {others:.1f} us)" if chosen == ids[0]
               else f"tuned {recorded[chosen][0]} {medians[chosen]:.1f} us beats the default's {medians[ids[0]]:.1f} us")
    progress.note(f"side by side: {verdict}; medians of {FINAL_ROUNDS} rounds over {len(ids)} schedules")
    slowdown = medians[ids[0]] / (_mean(recorded[ids[0]][1].run_secs) * 1e6) if ids[0] in recorded else 1.0
    if slowdown > SLOW_PHASE_RATIO:
        progress.note(f"the default ran {slowdown:.2f}x slower here than when it was recorded: the machine "
                      "seems busy, which can change the ranking; re-judge later with --trials 0")


def _check_budget(trials, time_budget_s) -> tuple[int, float]:
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 0):
        raise ValueError(
            f"`trials` must be a non-negative int (0: only the final side-by-side check) or None. Received: trials={trials!r}"
        )
    if time_budget_s is not None and (
        isinstance(time_budget_s, bool) or not isinstance(time_budget_s, (int, float)) or not time_budget_s > 0
    ):
        raise ValueError(f"`time_budget_s` must be a positive number of seconds or None. Received: {time_budget_s!r}")
    if trials is None:
        trials = 64 if time_budget_s is None else UNLIMITED
    return trials, math.inf if time_budget_s is None else float(time_budget_s)


def _check_runs_here(target) -> None:
    """Tuning without an RPC tracker measures on this machine."""
    import tvm

    from .deploy import host_arch, target_arch
    from .targets import missing_cpu_features

    if (
        target_arch(target) != host_arch()
        or (target.kind.name == "cuda" and not tvm.cuda(0).exist)
        or missing_cpu_features(str(target))  # its kernels would die of SIGILL when timed
    ):
        raise ValueError(
            f"Kernels for {target_key(target)} cannot run on this machine, so they cannot be timed here: "
            "tune on the device, or measure there through a TVM RPC tracker (`rpc_tracker`, `rpc_key`)."
        )


def tune(
    specs: DepthwiseSpec | Sequence[DepthwiseSpec],
    target: TargetLike = "host",
    trials: int | None = 64,
    time_budget_s: float | None = None,
    log_dir: str | Path | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    builder_timeout_s: float = 120.0,
    progress: TextIO | None = None,
    curve: str | Path | None = None,
) -> Path:
    """Tunes each spec for `target` and adds the records to the target's database.

    First, per spec, the template's knob combinations are measured (its default first, then
    the combinations that won on earlier specs; on CPUs, stride-1 3x3 NHWC float32 specs over
    the direct and the Winograd algorithm); then, per spec, MetaSchedule's evolutionary search
    (XGBoost cost model) runs over the template of the sweep's winning algorithm together with
    MetaSchedule's generated space for the trials left. Existing records are kept; a resumed run skips what was measured and the
    search warm-starts from the records. Each record is written as soon as it is measured.
    Last, a final check times the fastest distinct records and the template's default side by
    side (`FINAL_ROUNDS` alternating rounds) and stores the verdict in `choices.json`, which is
    what `compile` applies: the fastest by median, unless the default is within `DEFAULT_MARGIN`.

    Args:
        specs: One spec or a list.
        target: The target to tune for.
        trials: Measured candidates per spec (None: no limit but the time budget; 0: only the
            final check, which re-judges the records already there, e.g. logs tuned by an
            earlier version or on a busy machine).
        time_budget_s: Wall-clock budget for all specs, shared out evenly in each pass (time a
            spec leaves unused passes to the next; the sweeps' unused time to the searches).
        log_dir: Database folder (default: the user log folder of the target).
        rpc_tracker: `"host:port"` of a TVM RPC tracker: measure on the devices registered
            under `rpc_key` (kernels are built here, for `target`). Default: this machine.
        rpc_key: The device key at the tracker.
        builder_timeout_s: Per-candidate build timeout of the search phase.
        progress: A stream (e.g. `sys.stderr`) for a progress line per spec, or None.
        curve: Where to write the tuning curve (best latency vs trials per spec) as a PNG plot
            (needs matplotlib) plus its data as `<curve>.json`, or None.

    Returns:
        The database folder.

    Raises:
        ValueError: On a bad argument: among them a `log_dir` or `curve` folder that cannot be
            written, and an `rpc_tracker` where no TVM RPC tracker answers or that has no device
            registered under `rpc_key` (checked before tuning starts).
        ConnectionError: If the device under `rpc_key` goes away during the run (no server
            holds the key at the tracker, or the tracker does not answer, for 10 s); the
            records measured until then are kept.
        ImportError: If `curve` is given and matplotlib is not installed.
    """
    from tvm.s_tir import meta_schedule as ms

    from .build import template_for

    if isinstance(specs, DepthwiseSpec):
        specs = [specs]
    if not specs or not all(isinstance(s, DepthwiseSpec) for s in specs):
        raise ValueError("`specs` must be a DepthwiseSpec or a non-empty list of them.")
    trials, budget = _check_budget(trials, time_budget_s)
    tracker = parse_tracker(rpc_tracker, rpc_key)
    if curve is not None:
        import matplotlib  # noqa: F401  (fail before tuning, not after)

        cache.writable_folder(Path(curve).parent, "The folder of `curve` must be a folder this process can write to")
    tgt = resolve_target(target)
    rule = template_for(tgt)
    if tracker is None:
        _check_runs_here(tgt)
    else:
        check_tracker(*tracker)
    folder = cache.writable_folder(Path(log_dir) if log_dir is not None else user_log_dir(tgt),
                                  "`log_dir` must be a folder this process can write to")

    @functools.cache
    def tools():
        """MetaSchedule's builder and runner, made on first need: each starts a worker pool
        (about 2 s), which a sweep measured in-process never uses."""
        builder = ms.builder.LocalBuilder(f_build=_f_build, timeout_sec=builder_timeout_s)
        evaluator = ms.runner.EvaluatorConfig(**EVALUATOR, enable_cpu_cache_flush=False)
        if tracker is None:
            return builder, ms.runner.LocalRunner(evaluator_config=evaluator)
        config = ms.runner.RPCConfig(*tracker, session_timeout_sec=60)
        return builder, _watched_runner_class()(ms.runner.RPCRunner(config, evaluator_config=evaluator), watch)

    def device_lost(reason: str) -> None:
        stop.set()  # the tuner's stop event (bound below, before anything is measured): ends every phase
        _end_workers(tools()[1].inner.pool)

    watch = None if tracker is None else DeviceWatch(*tracker, on_lost=device_lost)

    end = time.monotonic() + budget
    favored: list[tuple] = []
    state = {"database": None, "seen": None}  # the open database, and its files as this tuner left them

    @contextlib.contextmanager
    def locked(mods):
        """The folder's lock, the database (reloaded only when another tuner wrote to the
        folder since this one released the lock: loading takes seconds once logs hold a few
        model sets) and the workloads of `mods` (algorithm -> module)."""
        with _exclusive(folder, progress):
            if state["database"] is None or _file_state(folder) != state["seen"]:
                state["database"] = _open_for_tuning(folder)
            database = state["database"]
            yield database, {algorithm: database.commit_workload(mod) for algorithm, mod in mods.items()}
            state["seen"] = _file_state(folder)
        forget_loaded()

    def measuring(mod):
        return _InProcess(mod, tgt) if tracker is None else _ThroughRunner(mod, tgt, *tools())

    jobs: list[tuple[DepthwiseSpec, dict, _Progress, str]] = []
    with _graceful_interrupt(progress) as stop:
        # Pass 1, every layer's template sweep: that is where tuning finds its gains (seconds
        # per layer), so a time budget spent searching early layers never leaves a later one
        # without its sweep. A layer reached past the deadline still gets its default measured.
        for index, spec in enumerate(specs, start=1):
            if stop.is_set():
                break
            deadline = time.monotonic() + (end - time.monotonic()) / (len(specs) - index + 1)
            spec_progress = _Progress(f"[{index}/{len(specs)}] {spec.key}", trials, deadline, progress, stop)
            mods = {algorithm: depthwise_module(spec, algorithm) for algorithm in algorithms(spec, tgt)}
            with locked(mods) as (database, workloads):
                earlier = [_mean(r.run_secs) for w in workloads.values() for r in database.get_top_k(w, 1)]
                if earlier:
                    spec_progress.resume_from(min(earlier))
                winner = _sweep(spec, mods, rule, tgt, database, workloads, measuring(mods["direct"]), trials,
                                spec_progress, favored)
            if winner is not None:
                favored.insert(0, winner)
            spec_progress.pause()
            # The search explores the algorithm whose combination won the sweep.
            jobs.append((spec, mods, spec_progress, winner[0] if winner is not None else "direct"))
        # Pass 2, per layer: MetaSchedule's search for the trials left, then the final check.
        for index, (spec, mods, spec_progress, searched) in enumerate(jobs):
            if stop.is_set():
                break
            spec_progress.resume(time.monotonic() + (end - time.monotonic()) / (len(jobs) - index))
            with locked(mods) as (database, workloads):
                measure = measuring(mods["direct"])
                left = trials - spec_progress.done
                if left > 0 and not spec_progress.expired():
                    _search(mods[searched], rule, spec, tgt, database, workloads[searched], measure, *tools(), left,
                            spec_progress)
                if not stop.is_set():
                    _final_check(spec, mods, rule, tgt, database, workloads, measure, folder, spec_progress)
            spec_progress.pause()
        if watch is not None and watch.lost is not None:
            raise ConnectionError(
                f"Tuning stopped: {watch.lost}. The records measured before that are kept in {folder}; "
                "run the same tuning again to resume once the device is back."
            )
    curves = {spec.key: spec_progress.curve for spec, _, spec_progress, _ in jobs}
    if curve is not None:
        write_curve(curves, Path(curve), title=f"Tuning {target_key(tgt)}")
    return folder


def _short_label(key: str) -> str:
    """`nhwc_n1_h112_w112_c32_k3x3_s1x1_...` -> `112x112x32 k3x3 s1x1` (plus the batch if > 1)."""
    parts = dict((p[0], p[1:]) for p in key.split("_")[1:7])
    batch = f" batch {parts['n']}" if parts.get("n", "1") != "1" else ""
    return f"{parts.get('h')}x{parts.get('w')}x{parts.get('c')} k{parts.get('k')} s{parts.get('s')}{batch}"


def write_curve(curves: dict[str, list[tuple[int, float, float]]], path: Path, title: str) -> None:
    """Plots best latency vs trials per spec to `path` (PNG) and writes the points next to it.

    Args:
        curves: Per spec key, `(trial, seconds since the spec started, best latency)` points.
        path: The PNG file; the data goes to `path` with `.json` appended.
        title: The plot title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    drawn = [(key, points) for key, points in curves.items() if points]
    for i, (key, points) in enumerate(drawn):
        # The color cycle has 10 colors and model sets have up to 12 layers: the line style
        # tells the 11th from the 1st; the marker shows a layer with one point.
        ax.step([p[0] for p in points], [p[2] * 1e6 for p in points], where="post", label=_short_label(key),
                linestyle=("-", "--", ":")[i // 10 % 3], marker="o", markevery=[0], markersize=3)
    ax.set(xlabel="trials", ylabel="best latency (us)", yscale="log", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    cache.atomic_write_json(path.with_name(path.name + ".json"), {
        key: [{"trial": t, "seconds": round(e, 3), "best_us": round(b * 1e6, 3)} for t, e, b in points]
        for key, points in curves.items()
    })
