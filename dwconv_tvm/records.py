"""Where tuning records live, and which schedule `compile` takes from them.

Records live in one MetaSchedule JSON database per target key (`llvm-znver4`, `cuda-sm_90`),
because MetaSchedule looks records up by workload alone and would otherwise hand one
machine's schedule to another:

- user logs: `$DWCONV_TVM_TUNING_LOGS/<key>/`, else `<cache folder>/tuning_logs/<key>/`;
- shipped logs: `tuning_logs/<key>/` in the repository, installed as `dwconv_tvm.tuning_logs`
  (read-only at run time).

Beside the two database files, `choices.json` holds each workload's verdict of the tuner's
final check: its fastest schedules and the template's default timed side by side, in
alternating order, after the search. Records measured minutes apart on a shared machine are
not comparable (this 2-vCPU VM swings up to 2x between phases: one shipped default was recorded
at 33 us and re-timed at 15 us), so where a verdict exists it decides, not the lowest record.
A spec has one workload per algorithm it can be computed with (`compute.algorithms`: direct,
and Winograd F(2, 3) on CPUs for stride-1 3x3 layers); a verdict may name a schedule of either.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple

from . import cache
from .compute import algorithms, depthwise_module
from .spec import DepthwiseSpec
from .targets import TargetLike, target_key

LOGS_ENV = "DWCONV_TVM_TUNING_LOGS"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
CHOICES = "choices.json"


def user_log_dir(target: TargetLike) -> Path:
    """The user's tuning database folder for `target`."""
    root = os.environ.get(LOGS_ENV)
    base = Path(root).expanduser() if root else cache.cache_root() / "tuning_logs"
    return base / target_key(target)


def _shipped_root() -> Path:
    """The installed `tuning_logs` folder, one subfolder per target key."""
    import dwconv_tvm.tuning_logs as shipped

    return Path(shipped.__file__).resolve().parent


def shipped_log_dir(target: TargetLike) -> Path:
    """The shipped (read-only) tuning database folder for `target`."""
    return _shipped_root() / target_key(target)


def shipped_keys() -> list[str]:
    """The target keys that have shipped tuning logs, sorted."""
    return sorted(folder.name for folder in _shipped_root().iterdir() if folder.is_dir() and _has_records(folder))


def has_shipped_logs(target: TargetLike) -> bool:
    """Whether `target`'s key has shipped tuning logs."""
    return _has_records(shipped_log_dir(target))


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


class _LogIndex(NamedTuple):
    """A folder's parsable lines: each workload line with its structural hash (None if the
    line has none), and each record line with the index of its workload."""

    workloads: list[tuple[str | None, str]]
    records: list[tuple[int, str]]


def _unusable(folder: str, reason: str) -> None:
    warnings.warn(f"Skipping the unusable tuning log {folder}: {reason}", stacklevel=6)


@functools.lru_cache(maxsize=16)
def _log_index(folder: str, records_mtime: float) -> _LogIndex | None:
    """The `_LogIndex` of a folder, read once per version of its records; damaged lines are
    skipped with a warning. None, with a warning, if a record names a workload that is not in
    the file (MetaSchedule's loader would fail on the folder)."""
    lines = {name: _valid_lines(Path(folder) / name) for name in (WORKLOADS, RECORDS)}
    bad = sum(b for _, b in lines.values())
    if bad:
        warnings.warn(f"Skipping {bad} damaged line(s) in the tuning log {folder}.", stacklevel=6)
    workloads = []
    for line in lines[WORKLOADS][0]:
        entry = json.loads(line)
        workloads.append((str(entry[0]) if isinstance(entry, list) and entry else None, line))
    records = []
    for line in lines[RECORDS][0]:
        entry = json.loads(line)
        if not (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int and 0 <= entry[0] < len(workloads)):
            _unusable(folder, f"a record names no workload of the file: {line[:60]}")
            return None
        records.append((entry[0], line))
    return _LogIndex(workloads, records)


@functools.lru_cache(maxsize=256)
def _database(folder: str, records_mtime: float, workload_hashes: frozenset[str]):
    """A JSON database of a folder's records for the workloads with these structural hashes,
    or None if the folder's files are unusable.

    MetaSchedule's loader rebuilds every workload module and trace of the files (1.8 s for the
    shipped MobileNetV2 and EfficientNet-B0 logs, on a layer's first call); a spec needs only
    its own workloads. So the lines of those are copied, their records renumbered, to a
    temporary database that MetaSchedule loads (shipped logs are read-only).
    """
    from tvm.s_tir import meta_schedule as ms

    index = _log_index(folder, records_mtime)
    if index is None:
        return None
    renumbered: dict[int, int] = {}  # index in the file -> index in the copy
    for position, (shash, _) in enumerate(index.workloads):
        if shash in workload_hashes:
            renumbered[position] = len(renumbered)
    # The rest of a record's line is kept byte for byte.
    kept = [f"[{renumbered[w]}," + line[line.index(",") + 1:] for w, line in index.records if w in renumbered]
    with tempfile.TemporaryDirectory(prefix="dwconv-tvm-log-") as copy:
        _write_lines(Path(copy) / WORKLOADS, [index.workloads[i][1] for i in renumbered])
        _write_lines(Path(copy) / RECORDS, kept)
        try:  # the loader reads the files once into memory; nothing is committed to this copy
            return ms.database.JSONDatabase(
                path_workload=str(Path(copy) / WORKLOADS), path_tuning_record=str(Path(copy) / RECORDS),
                allow_missing=False,
            )
        except Exception as err:  # a foreign or inconsistent file: MetaSchedule's loader raises
            _unusable(folder, str(err).splitlines()[-1])
            return None


_generation = 0  # counts `forget_loaded` calls, so that `build.compile`'s memo can tell


def forget_loaded() -> None:
    """Drops the logs read so far, so the next lookup reads the files again (after tuning)."""
    global _generation
    _log_index.cache_clear()
    _database.cache_clear()
    _generation += 1


def generation() -> int:
    """How many times the logs were dropped: a lookup made under another value may be stale."""
    return _generation


def _related(spec: DepthwiseSpec) -> list[DepthwiseSpec]:
    """Workloads whose records also fit `spec`: itself, then the same convolution with other
    epilogues (without bias and activation, as model sets are tuned; with bias). The epilogue
    is fused into the `output` block, so their schedules' traces replay on `spec`."""
    plain = dataclasses.replace(spec, bias=False, activation=None)
    return list(dict.fromkeys([spec, plain, dataclasses.replace(plain, bias=True)]))


def _mean(run_secs) -> float:
    return float(sum(float(s) for s in run_secs) / len(run_secs))


def trace_id(trace) -> str:
    """A short hash of a schedule trace: how `choices.json` names a record's schedule."""
    return hashlib.sha256(str(trace).encode()).hexdigest()[:12]


def schedule_fingerprint(sch) -> str:
    """A short hash of a schedule's trace, so the kernel cache tells tuned kernels apart."""
    return trace_id(sch.trace)


def _load_choices(path: Path) -> dict | None:
    """The verdicts in a `choices.json`, or None if it is unreadable or not ours."""
    data = cache.read_json(path)
    choices = data.get("choices") if data is not None else None
    return choices if isinstance(choices, dict) else None


@functools.lru_cache(maxsize=16)
def _choices(path: str, mtime_ns: int) -> dict:
    choices = _load_choices(Path(path))
    if choices is None:
        warnings.warn(f"Ignoring the unreadable tuning verdicts {path}: the fastest records apply instead.", stacklevel=4)
        return {}
    return choices


def read_choices(folder: Path) -> dict:
    """The side-by-side verdicts of a log folder, by workload key (empty if there are none)."""
    path = Path(folder) / CHOICES
    try:
        mtime_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    return _choices(str(path), mtime_ns)


def record_choice(folder: Path, key: str, chosen: str, side_by_side_us: dict[str, float], default: str) -> None:
    """Stores one workload's verdict (under the folder's tuning lock, so read-modify-write is
    safe; the file is replaced atomically). An unreadable file is set aside, not overwritten.

    Args:
        folder: The log folder.
        key: The workload's spec key.
        chosen: `trace_id` of the schedule to use.
        side_by_side_us: Median microseconds of every schedule compared, by `trace_id`.
        default: `trace_id` of the template's default among them.
    """
    path = Path(folder) / CHOICES
    choices = _load_choices(path) if path.exists() else {}
    if choices is None:
        aside = path.with_name(f"{CHOICES}.unusable-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        warnings.warn(f"The tuning verdicts {path} could not be read; set aside as {aside.name}.", stacklevel=3)
        choices = {}
    choices[key] = {"chosen": chosen, "default": default, "median_us": side_by_side_us,
                    "checked": time.strftime("%Y-%m-%dT%H:%M:%S")}
    cache.atomic_write_json(path, {"choices": choices})


class Chosen(NamedTuple):
    """The tuned schedule `compile` applies to a spec.

    `source` is `"user"` or `"shipped"`, plus `"-related"` for another epilogue's record;
    `seconds` its latency (from the final check where there is one, else its record);
    `default_seconds` the template default's, timed beside it in the final check (else None);
    `kept_default` whether the final check found nothing faster than the default;
    `algorithm` what the schedule computes (`compute.ALGORITHMS`).
    """

    schedule: object
    source: str
    seconds: float
    default_seconds: float | None = None
    kept_default: bool = False
    algorithm: str = "direct"


def _verdict(choices: dict, key: str) -> dict | None:
    """A workload's verdict if it is well formed (the file may be hand-edited), else None."""
    verdict = choices.get(key)
    try:
        medians = verdict["median_us"]
        float(medians[verdict["chosen"]]), float(medians[verdict["default"]])
    except (TypeError, KeyError, ValueError):
        return None
    return verdict


def _pick(database, workloads: dict, verdict: dict | None):
    """`(algorithm, record)`: the verdict's record if it names one of the workloads' records
    (`workloads`: algorithm -> workload), else the fastest record of any of them."""
    if verdict is not None:
        for algorithm, workload in workloads.items():
            for record in database.get_top_k(workload, 1 << 30):
                if trace_id(record.trace) == verdict["chosen"]:
                    return algorithm, record
    fastest = [(_mean(r.run_secs), algorithm, r) for algorithm, w in workloads.items() for r in database.get_top_k(w, 1)]
    return min(fastest, key=lambda f: f[0])[1:] if fastest else (None, None)


def best_record(spec: DepthwiseSpec, target) -> Chosen | None:
    """The schedule to use from tuning records, if any: the spec's own records (user logs, then
    shipped logs), else those of the same convolution with another epilogue (`_related`), over
    every algorithm the spec can be computed with. In a folder, the final check's verdict
    decides; without one, the fastest record.

    Args:
        spec: The workload.
        target: A resolved `tvm.target.Target`.

    Returns:
        A `Chosen`, or None.
    """
    import tvm_ffi
    from tvm import s_tir

    kinds = algorithms(spec, target)
    candidates = [(candidate, {a: depthwise_module(candidate, a) for a in kinds}) for candidate in _related(spec)]
    # MetaSchedule's key
    hashes = frozenset(str(tvm_ffi.structural_hash(mod)) for _, mods in candidates for mod in mods.values())
    databases = []
    for source, folder in (("user", user_log_dir(target)), ("shipped", shipped_log_dir(target))):
        if _has_records(folder):
            database = _database(str(folder), (folder / RECORDS).stat().st_mtime, hashes)
            if database is not None:
                databases.append((source, database, read_choices(folder)))
    for index, (candidate, mods) in enumerate(candidates):
        for source, database, choices in databases:
            workloads = {a: database.commit_workload(mod) for a, mod in mods.items() if database.has_workload(mod)}
            if not workloads:
                continue
            verdict = _verdict(choices, candidate.key)
            algorithm, record = _pick(database, workloads, verdict)
            if record is None:
                continue
            sch = s_tir.Schedule(depthwise_module(spec, algorithm))
            try:
                record.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception:  # TVM's schedule errors: this record does not fit the spec
                continue
            source = source if index == 0 else f"{source}-related"
            if verdict is None or verdict["chosen"] != trace_id(record.trace):
                return Chosen(sch, source, _mean(record.run_secs), algorithm=algorithm)
            medians = verdict["median_us"]
            return Chosen(sch, source, float(medians[verdict["chosen"]]) / 1e6, float(medians[verdict["default"]]) / 1e6,
                          kept_default=verdict["chosen"] == verdict["default"], algorithm=algorithm)
    return None
