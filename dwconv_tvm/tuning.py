"""Auto-tuning with MetaSchedule, and the tuned records that `compile` applies.

Records live in one MetaSchedule JSON database per target key (`llvm-znver4`, `cuda-sm_90`),
because MetaSchedule looks records up by workload alone and would otherwise hand one
machine's schedule to another:

- user logs: `$DWCONV_TVM_TUNING_LOGS/<key>/`, else `<cache folder>/tuning_logs/<key>/`;
- shipped logs: `tuning_logs/<key>/` in the repository, installed as `dwconv_tvm.tuning_logs`
  (read-only at run time).

`compile` uses the best user record, else the best shipped record, else the hand-written
template's default. The search space is that template (its knobs) together with MetaSchedule's
generated space, and the template's default is measured and recorded first, so a tuned kernel
is never slower than the untuned one as measured.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from . import cache
from .compute import depthwise_module
from .spec import DepthwiseSpec
from .targets import TargetLike, resolve_target, target_key

LOGS_ENV = "DWCONV_TVM_TUNING_LOGS"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def user_log_dir(target: TargetLike) -> Path:
    """The user's tuning database folder for `target`."""
    root = os.environ.get(LOGS_ENV)
    base = Path(root).expanduser() if root else cache.cache_root() / "tuning_logs"
    return base / target_key(target)


def shipped_log_dir(target: TargetLike) -> Path:
    """The shipped (read-only) tuning database folder for `target`."""
    import dwconv_tvm.tuning_logs as shipped

    return Path(shipped.__file__).resolve().parent / target_key(target)


def _has_records(folder: Path) -> bool:
    return (folder / RECORDS).is_file() and (folder / WORKLOADS).is_file()


def _valid_lines(path: Path) -> tuple[list[str], int]:
    """The lines of a MetaSchedule JSON-lines file that parse, and how many did not (a tuner
    killed mid-write leaves a torn last line, which MetaSchedule's loader rejects whole)."""
    good, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            bad += 1
            continue
        good.append(line)
    return good, bad


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def repair(folder: Path) -> int:
    """Drops unparsable lines from a database folder in place (atomically); returns how many."""
    dropped = 0
    for name in (WORKLOADS, RECORDS):
        path = Path(folder) / name
        if not path.is_file():
            continue
        good, bad = _valid_lines(path)
        if bad:
            dropped += bad
            cache.atomic_write(path, lambda tmp, good=good: _write_lines(tmp, good))
    if dropped:
        warnings.warn(f"Dropped {dropped} damaged line(s) from the tuning log {folder}.", stacklevel=2)
    return dropped


@functools.lru_cache(maxsize=16)
def _database(folder: str, records_mtime: float):
    """A loaded JSON database (reloaded when the records file changes). Damaged lines are
    skipped with a warning, from a sanitized copy: shipped logs are read-only."""
    from tvm.s_tir import meta_schedule as ms

    lines = {name: _valid_lines(Path(folder) / name) for name in (WORKLOADS, RECORDS)}
    bad = sum(b for _, b in lines.values())
    if bad:
        warnings.warn(f"Skipping {bad} damaged line(s) in the tuning log {folder}.", stacklevel=4)
    # The loader reads the files once into memory and this database is never committed to,
    # so a sanitized copy only has to exist while it loads.
    with tempfile.TemporaryDirectory(prefix="dwconv-tvm-log-") as copy:
        source = Path(copy) if bad else Path(folder)
        if bad:
            for name, (good, _) in lines.items():
                _write_lines(source / name, good)
        try:
            return ms.database.JSONDatabase(
                path_workload=str(source / WORKLOADS), path_tuning_record=str(source / RECORDS), allow_missing=False
            )
        except Exception as err:  # a foreign or inconsistent file: MetaSchedule's loader raises
            warnings.warn(f"Skipping the unusable tuning log {folder}: {str(err).splitlines()[-1]}", stacklevel=4)
            return None


def best_record(spec: DepthwiseSpec, target) -> tuple[object, str, float] | None:
    """The schedule to use from tuning records, if any: user logs first, then shipped logs.

    Args:
        spec: The workload.
        target: A resolved `tvm.target.Target`.

    Returns:
        `(tvm.s_tir.Schedule, source, seconds)` with source `"user"` or `"shipped"`, or None.
    """
    for source, folder in (("user", user_log_dir(target)), ("shipped", shipped_log_dir(target))):
        if not _has_records(folder):
            continue
        database = _database(str(folder), (folder / RECORDS).stat().st_mtime)
        if database is None:
            continue
        mod = depthwise_module(spec)
        records = database.get_top_k(database.commit_workload(mod), 1) if database.has_workload(mod) else []
        if not records:
            continue
        sch = database.query_schedule(mod, target, workload_name="main")
        if sch is not None:
            seconds = float(sum(float(s) for s in records[0].run_secs) / len(records[0].run_secs))
            return sch, source, seconds
    return None


def schedule_fingerprint(sch) -> str:
    """A short hash of a schedule's trace, so the kernel cache tells tuned kernels apart."""
    return hashlib.sha256(str(sch.trace).encode()).hexdigest()[:12]


def _f_build(mod, target, _params):
    """LocalBuilder's build: the default one imports tensor intrinsics in every fresh worker,
    which takes longer than its timeout on a 2-core machine."""
    import tvm

    return tvm.tirx.build(mod, target=target)


def _measure(mod, target, builder, runner) -> list[float] | None:
    """Builds and runs a scheduled module through the tuning builder and runner."""
    from tvm.s_tir import meta_schedule as ms

    (built,) = builder.build([ms.builder.BuilderInput(mod, target)])
    if built.error_msg:
        return None
    args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    device = "cpu" if target.kind.name == "llvm" else target.kind.name
    (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, device, args_info)])
    result = future.result()
    return None if result.error_msg else [float(s) for s in result.run_secs]


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


def _progress_callback(label: str, total: int, stream: TextIO):
    """A MetaSchedule measure callback drawing one progress line: trials, best latency, ETA."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def __init__(self):
            self.done, self.best, self.start = 0, math.inf, time.monotonic()

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for result in runner_results:
                self.done += 1
                if not result.error_msg and result.run_secs:
                    self.best = min(self.best, sum(float(t) for t in result.run_secs) / len(result.run_secs))
            elapsed = time.monotonic() - self.start
            eta = elapsed / max(self.done, 1) * max(total - self.done, 0)
            filled = int(20 * min(self.done, total) / total)
            best = f"{self.best * 1e6:.1f} us" if self.best < math.inf else "-"
            stream.write(f"\r{label} [{'#' * filled}{'.' * (20 - filled)}] {min(self.done, total)}/{total} trials, "
                         f"best {best}, ETA {eta:.0f} s ")
            stream.flush()

    return Progress()


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


def tune(
    specs: DepthwiseSpec | Sequence[DepthwiseSpec],
    target: TargetLike = "host",
    trials: int = 64,
    log_dir: str | Path | None = None,
    builder_timeout_s: float = 120.0,
    progress: TextIO | None = None,
) -> Path:
    """Tunes each spec for `target` and appends the records to the target's database.

    Existing records are kept and the search resumes from them (MetaSchedule warm-starts from
    the database). MetaSchedule's own logs go to a temporary work folder.

    Args:
        specs: One spec or a list.
        target: The target to tune for (measured on this machine).
        trials: Measured candidates per spec.
        log_dir: Database folder (default: the user log folder of the target).
        builder_timeout_s: Per-candidate build timeout.
        progress: A stream (e.g. `sys.stderr`) for a progress line per spec, or None.

    Returns:
        The database folder.

    Raises:
        ValueError: On a bad argument.
    """
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from .schedules import for_target

    if isinstance(specs, DepthwiseSpec):
        specs = [specs]
    if not specs or not all(isinstance(s, DepthwiseSpec) for s in specs):
        raise ValueError("`specs` must be a DepthwiseSpec or a non-empty list of them.")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"`trials` must be a positive int. Received: trials={trials!r}")
    tgt = resolve_target(target)
    rule = for_target(tgt)
    if rule is None:
        raise ValueError(f"No schedule template for target kind '{tgt.kind.name}'.")
    folder = Path(log_dir) if log_dir is not None else user_log_dir(tgt)
    folder.mkdir(parents=True, exist_ok=True)
    database = _open_for_tuning(folder)
    builder = ms.builder.LocalBuilder(f_build=_f_build, timeout_sec=builder_timeout_s)
    runner = ms.runner.LocalRunner()
    for index, spec in enumerate(specs, start=1):
        mod = depthwise_module(spec)
        workload = database.commit_workload(mod)
        if not database.get_top_k(workload, 1):
            # The template's untuned schedule enters the database first: the search can only
            # add faster records, so the best record is never slower than the default.
            sch = s_tir.Schedule(mod)
            rule.schedule(sch, spec, tgt)
            seconds = _measure(sch.mod, tgt, builder, runner)
            if seconds:
                database.commit_tuning_record(ms.database.TuningRecord(
                    sch.trace, workload, seconds, tgt, ms.arg_info.ArgInfo.from_prim_func(mod["main"]),
                ))

        def template(sch, spec=spec):
            rule.schedule(sch, spec, tgt)

        space = ms.space_generator.SpaceGeneratorUnion([
            ms.space_generator.ScheduleFn(template, sch_rules=[], postprocs="from-target", mutator_probs="from-target"),
            ms.space_generator.PostOrderApply(),
        ])
        callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
        if progress is not None:
            callbacks.append(_progress_callback(f"[{index}/{len(specs)}] {spec.key}", trials, progress))
        with tempfile.TemporaryDirectory(prefix="dwconv-tvm-tune-") as work_dir, _metaschedule_logging():
            ms.tune_tir(
                mod, tgt, work_dir, max_trials_global=trials, num_trials_per_iter=min(trials, 32),
                builder=builder, runner=runner, database=database, space=space,
                measure_callbacks=callbacks,
            )
        if progress is not None:
            progress.write("\n")
    _database.cache_clear()
    return folder
