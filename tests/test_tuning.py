"""Tuning with MetaSchedule (tiny trial counts, temporary log folders) and applying records."""

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from numpy._core._multiarray_umath import __cpu_features__ as HOST_FEATURES

import dwconv_tvm
from dwconv_tvm import DepthwiseSpec, build, records, tuning
from dwconv_tvm.compute import algorithms, depthwise_module
from reference import ACTIVATIONS, depthwise

SPEC = DepthwiseSpec.from_keras((1, 10, 10, 32), 3, 1, "same", activation="relu6")


def _space(spec):
    """How many knob combinations the host's template has for `spec` over its algorithms (what
    a sweep measures)."""
    from tvm import s_tir

    from dwconv_tvm.schedules import cpu
    from dwconv_tvm.schedules.common import knob_space

    host = dwconv_tvm.resolve_target("host")
    return sum(len(knob_space(lambda a=a: cpu.schedule(s_tir.Schedule(depthwise_module(spec, a)), spec, host)))
               for a in algorithms(spec, host))


@pytest.fixture(scope="module")
def tuned_logs(tmp_path_factory):
    """One tiny tuning run shared by the tests below (the expensive part)."""
    folder = tmp_path_factory.mktemp("logs") / "db"
    returned = tuning.tune(SPEC, "host", trials=4, log_dir=folder)
    assert returned == folder
    return folder


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DWCONV_TVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DWCONV_TVM_TUNING_LOGS", str(tmp_path / "user"))
    monkeypatch.setattr(records, "shipped_log_dir", lambda target: tmp_path / "shipped" / dwconv_tvm.target_key(target))
    monkeypatch.setattr(build, "_memory", {})
    return tmp_path


def _install(logs, root, target):
    destination = root / dwconv_tvm.target_key(target)
    shutil.copytree(logs, destination)
    return destination


def _check_numerics(op, rng):
    """The op against the reference; the specs here all have bias and 'same' padding."""
    spec = op.spec
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    k = rng.standard_normal(spec.kernel_shape).astype(np.float32)
    b = rng.standard_normal(spec.bias_shape).astype(np.float32)
    expected = depthwise(x, k, b, padding="same")
    if spec.activation:
        expected = ACTIVATIONS[spec.activation](expected)
    np.testing.assert_allclose(op(x, k, b), expected, atol=1e-4)


def test_database_files_and_seeded_default(tuned_logs):
    assert (tuned_logs / records.WORKLOADS).is_file() and (tuned_logs / records.RECORDS).is_file()
    lines = (tuned_logs / records.RECORDS).read_text().splitlines()
    assert len(lines) >= 2  # the measured default plus searched candidates


def _database(folder):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(str(folder / records.WORKLOADS), str(folder / records.RECORDS))


def _records(folder):
    return _database(folder).get_all_tuning_records()


def test_sweep_measures_the_default_first_and_resumes(tuned_logs, tmp_path):
    from tvm import s_tir

    from dwconv_tvm.schedules import common, cpu

    with common.forced_knobs() as plan:
        cpu.schedule(s_tir.Schedule(depthwise_module(SPEC)), SPEC, dwconv_tvm.resolve_target("host"))
    first_line = json.loads((tuned_logs / records.RECORDS).read_text().splitlines()[0])
    decisions = [decision for _, decision in first_line[1][0][1]]  # [workload, [[insts, decisions], ...]]
    assert decisions == plan.chosen
    first = _records(tuned_logs)
    copy = tmp_path / "db"
    shutil.copytree(tuned_logs, copy)
    tuning.tune(SPEC, "host", trials=3, log_dir=copy, curve=tmp_path / "curve.png")
    traces = [str(r.trace) for r in _records(copy)]
    assert len(traces) == len(first) + 3 and len(set(traces)) == len(traces)  # nothing measured twice
    # The resumed curve starts from the earlier run's best, and best so far never gets worse.
    (points,) = json.loads((tmp_path / "curve.png.json").read_text()).values()
    earlier_best = min(np.mean([float(t) for t in r.run_secs]) for r in first) * 1e6
    assert points[0]["trial"] == 0 and points[0]["best_us"] == pytest.approx(earlier_best, abs=1e-3)
    assert all(p["best_us"] <= earlier_best + 1e-3 for p in points)


def test_the_sweep_covers_every_algorithm(tuned_logs):
    # SPEC (NHWC float32 3x3, stride 1) can run Winograd on a CPU: its sweep measures both
    # algorithms' defaults first, each under its own workload.
    database = _database(tuned_logs)
    for algorithm in ("direct", "winograd"):
        mod = depthwise_module(SPEC, algorithm)
        assert database.has_workload(mod)
        assert database.get_top_k(database.commit_workload(mod), 10), algorithm


def _commit_defaults(folder, host, seconds):
    """A database in `folder` holding each algorithm's template default of SPEC, recorded at
    `seconds[algorithm]`; returns their trace ids."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from dwconv_tvm.schedules import cpu

    folder.mkdir(parents=True, exist_ok=True)
    database = _database(folder)
    ids = {}
    for algorithm, run_secs in seconds.items():
        mod = depthwise_module(SPEC, algorithm)
        sch = s_tir.Schedule(mod)
        cpu.schedule(sch, SPEC, host)
        args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        database.commit_tuning_record(
            ms.database.TuningRecord(sch.trace, database.commit_workload(mod), [run_secs], host, args_info))
        ids[algorithm] = records.trace_id(sch.trace)
    return ids


def test_a_winograd_record_applies_as_its_verdict_says(isolated, rng):
    host = dwconv_tvm.resolve_target("host")
    folder = records.user_log_dir(host)
    ids = _commit_defaults(folder, host, {"direct": 2e-6, "winograd": 3e-6})
    assert records.best_record(SPEC, host).algorithm == "direct"  # no verdict: the fastest record
    records.record_choice(folder, SPEC.key, ids["winograd"], {ids["winograd"]: 5.0, ids["direct"]: 6.0}, ids["direct"])
    records.forget_loaded()
    found = records.best_record(SPEC, host)
    assert found.algorithm == "winograd" and found.seconds == pytest.approx(5e-6) and not found.kept_default
    op = dwconv_tvm.compile(SPEC)
    assert op.schedule == f"tuned:user:{ids['winograd']}"
    _check_numerics(op, rng)
    records.forget_loaded()


def test_time_budget_stops_the_sweep(tmp_path):
    start = time.monotonic()
    tuning.tune(SPEC, "host", trials=None, time_budget_s=1.5, log_dir=tmp_path / "db")
    elapsed = time.monotonic() - start
    # The template alone has dozens of knob combinations here (~0.25 s each): the budget cut it short.
    assert 1 <= len(_records(tmp_path / "db")) < _space(SPEC)
    assert elapsed < 20


SMALL = DepthwiseSpec.from_keras((1, 8, 8, 16), 3, 1, "same")  # 28 template combinations on znver4 (_space)


def test_every_layer_is_swept_before_any_search(tmp_path, monkeypatch):
    # The sweep finds the gains (0.25 s a combination); the search's rounds of 8 find less. Searching the
    # first layer before sweeping the next used to leave later layers of a budget with nothing.
    calls = []
    sweep = tuning._sweep
    monkeypatch.setattr(tuning, "_sweep", lambda spec, *args: calls.append(("sweep", spec)) or sweep(spec, *args))
    monkeypatch.setattr(tuning, "_search", lambda mod, rule, spec, *args: calls.append(("search", spec)))
    other = dataclasses.replace(SMALL, activation="relu")
    tuning.tune([SMALL, other], trials=_space(SMALL) + 2, log_dir=tmp_path / "db")  # trials left to search
    assert calls == [("sweep", SMALL), ("sweep", other), ("search", SMALL), ("search", other)]


def test_side_by_side_builds_the_modules_of_its_previous_call_once(monkeypatch):
    # The final check times its finalists right after its prescreen timed them.
    import tvm
    from tvm import s_tir

    from dwconv_tvm.schedules import cpu

    host = dwconv_tvm.resolve_target("host")
    sch = s_tir.Schedule(depthwise_module(SMALL))
    cpu.schedule(sch, SMALL, host)
    other = s_tir.Schedule(depthwise_module(SMALL))
    cpu.schedule(other, SMALL, host)
    measure = tuning._InProcess(sch.mod, host)
    built = []
    build = tvm.tirx.build
    monkeypatch.setattr(tvm.tirx, "build", lambda mod, **kw: built.append(mod) or build(mod, **kw))
    first = measure.side_by_side([sch.mod, other.mod], 1)
    again = measure.side_by_side([other.mod], 2)
    assert built == [sch.mod, other.mod] and len(first) == 2 and len(again[0]) == 2
    measure.side_by_side([sch.mod], 1)  # only the previous call's modules are kept
    assert built == [sch.mod, other.mod, sch.mod]


def test_rpc_side_by_side_builds_the_modules_of_its_previous_call_once(tmp_path):
    # As in-process, through MetaSchedule's builder and runner (stand-ins here; the loopback
    # tracker test runs the real ones): artifacts of the previous call are reused, then removed.
    import gc
    import types

    host = dwconv_tvm.resolve_target("host")
    mods = [depthwise_module(SMALL) for _ in range(3)]
    built, ran = [], []

    class Builder:
        def build(self, inputs):
            results = []
            for item in inputs:
                built.append(item.mod)
                folder = tmp_path / f"artifact{len(built)}"
                folder.mkdir()
                (folder / "lib.so").write_text("")
                results.append(types.SimpleNamespace(error_msg=None, artifact_path=str(folder / "lib.so")))
            return results

    class Runner:
        def run(self, inputs):
            ran.extend(item.artifact_path for item in inputs)
            result = types.SimpleNamespace(error_msg=None, run_secs=[1e-6])
            return [types.SimpleNamespace(result=lambda: result) for _ in inputs]

    measure = tuning._ThroughRunner(mods[0], host, Builder(), Runner())
    assert [len(s) for s in measure.side_by_side(mods[:2], 1)] == [1, 1]
    assert [len(s) for s in measure.side_by_side(mods[1:2], 3)] == [3]
    assert built == mods[:2] and sorted(p.name for p in tmp_path.iterdir()) == ["artifact2"]
    measure.side_by_side([mods[2]], 1)  # only the previous call's modules are kept
    assert built == mods and sorted(p.name for p in tmp_path.iterdir()) == ["artifact3"]
    assert measure([mods[0]]) == [[1e-6]] and len(built) == 4  # a plain measurement keeps nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact3"]
    del measure
    gc.collect()
    assert not any(tmp_path.iterdir())  # what was kept goes with the measurer


def test_the_sweep_times_its_combinations_side_by_side(tmp_path, monkeypatch):
    # Records measured seconds apart do not compare on a shared machine: the sweep times each
    # group of combinations in interleaved rounds, and the final check then a prescreen of each
    # algorithm's fastest records (one round) and its finalists.
    groups = []
    side_by_side = tuning._InProcess.side_by_side
    monkeypatch.setattr(tuning._InProcess, "side_by_side",
                        lambda self, mods, rounds: groups.append((len(mods), rounds)) or side_by_side(self, mods, rounds))
    monkeypatch.setattr(tuning, "_search", lambda *args: None)
    tuning.tune(SMALL, trials=18, log_dir=tmp_path / "db")
    sweep_rounds = tuning.EVALUATOR["repeat"]
    assert groups[:2] == [(tuning.SWEEP_GROUP, sweep_rounds), (18 - tuning.SWEEP_GROUP, sweep_rounds)]
    kinds = len(algorithms(SMALL, dwconv_tvm.resolve_target("host")))
    assert groups[2][1] == 1 and tuning.FINALISTS < groups[2][0] <= tuning.PRESCREEN * kinds
    assert groups[3][1] == tuning.FINAL_ROUNDS and len(groups) == 4
    assert len(_records(tmp_path / "db")) == 18


def test_a_layer_past_the_deadline_still_gets_its_default_measured(tmp_path):
    tuning.tune([SPEC, SMALL], trials=None, time_budget_s=0.05, log_dir=tmp_path / "db")
    database = _database(tmp_path / "db")
    for spec in (SPEC, SMALL):
        (record,) = database.get_top_k(database.commit_workload(depthwise_module(spec)), 10)
        assert "decision" in str(record.trace)


def test_no_records_means_default(isolated):
    assert records.best_record(SPEC, dwconv_tvm.resolve_target("host")) is None
    assert dwconv_tvm.compile(SPEC).schedule == "default:llvm"


def test_user_records_are_applied(isolated, tuned_logs, rng):
    host = dwconv_tvm.resolve_target("host")
    _install(tuned_logs, isolated / "user", host)
    found = records.best_record(SPEC, host)
    assert found.source == "user" and found.seconds > 0 and found.default_seconds > 0
    op = dwconv_tvm.compile(SPEC)
    assert op.schedule.startswith("tuned:user:")
    assert op.path != build.kernel_path(SPEC, host, "default:llvm")  # cache knows the record
    _check_numerics(op, rng)


def test_shipped_records_apply_and_user_records_win(isolated, tuned_logs, rng):
    host = dwconv_tvm.resolve_target("host")
    _install(tuned_logs, isolated / "shipped", host)
    op = dwconv_tvm.compile(SPEC)
    assert op.schedule.startswith("tuned:shipped:")
    _check_numerics(op, rng)
    _install(tuned_logs, isolated / "user", host)
    build._memory.clear()
    assert dwconv_tvm.compile(SPEC).schedule.startswith("tuned:user:")


def test_records_of_another_epilogue_apply_in_the_tuning_process(isolated, rng):
    # Model sets are tuned without bias and activation; a layer with both reuses those records.
    plain = dataclasses.replace(SPEC, bias=False, activation=None)
    host = dwconv_tvm.resolve_target("host")
    untuned = dwconv_tvm.compile(SPEC)
    assert untuned.schedule == "default:llvm" and dwconv_tvm.compile(SPEC) is untuned
    tuning.tune(plain, trials=2, log_dir=records.user_log_dir(host))
    assert records.best_record(plain, host).source == "user"
    op = dwconv_tvm.compile(SPEC)  # compiled before tuning, in this process: looked up again
    assert op.schedule.startswith("tuned:user-related:")
    _check_numerics(op, rng)
    records.forget_loaded()
    assert dwconv_tvm.compile(SPEC) is op  # same records, same schedule: the op is kept


def test_records_are_per_target(isolated, tuned_logs):
    _install(tuned_logs, isolated / "user", dwconv_tvm.resolve_target("host"))
    other = dwconv_tvm.resolve_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    assert records.best_record(SPEC, other) is None  # another CPU never gets this machine's records


def test_a_lookup_loads_only_its_own_workloads(isolated, tuned_logs):
    # MetaSchedule's loader rebuilds every workload and trace of a folder (1.8 s for the shipped
    # logs on a layer's first call); a lookup loads its own, so another workload's bad record
    # does not cost this spec its records.
    host = dwconv_tvm.resolve_target("host")
    folder = _install(tuned_logs, isolated / "user", host)
    workloads = (folder / records.WORKLOADS).read_text().splitlines()
    stranger = json.loads(workloads[0])
    stranger[0] = "12345"  # another structural hash: a workload no spec here has
    with open(folder / records.WORKLOADS, "a") as f:
        f.write(json.dumps(stranger) + "\n")
    record = json.loads((folder / records.RECORDS).read_text().splitlines()[0])
    record[0], record[1][0] = len(workloads), [[["NoSuchInstruction", [], [], []]], []]
    with open(folder / records.RECORDS, "a") as f:
        f.write(json.dumps(record) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op = dwconv_tvm.compile(SPEC)
    assert op.schedule.startswith("tuned:user:")


class _Timed:
    """Stands in for the tuner's measurement in the final check: fixed medians by position,
    the template default first."""

    def __init__(self, default_us, others_us):
        self.times = [default_us, *others_us]
        self.rounds = None

    def side_by_side(self, mods, rounds):
        self.rounds = rounds
        return [[self.times[min(i, len(self.times) - 1)] * 1e-6] * rounds for i in range(len(mods))]


def _final_check(folder, default_us, others_us, stream=None):
    from tvm import s_tir

    from dwconv_tvm.schedules import cpu

    host = dwconv_tvm.resolve_target("host")
    mods = {a: depthwise_module(SPEC, a) for a in algorithms(SPEC, host)}
    database = _database(folder)
    progress = tuning._Progress("spec", 1, float("inf"), stream, None)
    timed = _Timed(default_us, others_us)
    workloads = {a: database.commit_workload(mod) for a, mod in mods.items()}
    tuning._final_check(SPEC, mods, cpu, host, database, workloads, timed, folder, progress)
    default = s_tir.Schedule(mods["direct"])
    cpu.schedule(default, SPEC, host)
    return json.loads((folder / records.CHOICES).read_text())["choices"][SPEC.key], records.trace_id(default.trace)


def test_final_check_keeps_the_default_unless_clearly_faster(tuned_logs, tmp_path):
    folder = tmp_path / "db"
    shutil.copytree(tuned_logs, folder)
    verdict, default = _final_check(folder, 10.0, [9.9, 9.95])  # within the 2% margin: noise
    assert verdict["chosen"] == default == verdict["default"] and verdict["median_us"][default] == 10.0
    assert len(verdict["median_us"]) >= 2
    verdict, default = _final_check(folder, 10.0, [9.0, 8.0])  # the second-fastest finalist wins
    assert verdict["chosen"] != default and verdict["median_us"][verdict["chosen"]] == 8.0


class _PrescreenFavorsLast(_Timed):
    """The prescreen (one round) times its last candidate, the slowest-recorded of the last
    algorithm, fastest; the final rounds keep that ranking for the same module."""

    def side_by_side(self, mods, rounds):
        if rounds == 1:
            self.favored = mods[-1]
            return [[(1.0 if mod is self.favored else 10.0) * 1e-6] for mod in mods]
        return [[(1.0 if mod is self.favored else 10.0) * 1e-6] * rounds for mod in mods]


def test_final_check_picks_finalists_by_a_prescreen_in_this_phase(tuned_logs, tmp_path, monkeypatch):
    # Recorded latencies come from other phases of a shared machine: the finalists are the
    # fastest of a back-to-back prescreen, so a record measured in a slow phase can still win.
    from tvm import s_tir

    from dwconv_tvm.schedules import cpu

    folder = tmp_path / "db"
    shutil.copytree(tuned_logs, folder)
    monkeypatch.setattr(tuning, "FINALISTS", 1)
    host = dwconv_tvm.resolve_target("host")
    mods = {a: depthwise_module(SPEC, a) for a in algorithms(SPEC, host)}
    database = _database(folder)
    workloads = {a: database.commit_workload(mod) for a, mod in mods.items()}
    measure = _PrescreenFavorsLast(10.0, [])
    tuning._final_check(SPEC, mods, cpu, host, database, workloads, measure, folder,
                        tuning._Progress("spec", 1, float("inf"), None, None))
    default = s_tir.Schedule(mods["direct"])
    cpu.schedule(default, SPEC, host)
    default_id = records.trace_id(default.trace)
    verdict = json.loads((folder / records.CHOICES).read_text())["choices"][SPEC.key]
    by_record = sorted((tuning._mean(r.run_secs), records.trace_id(r.trace)) for r in _records(folder))
    fastest_recorded = next(tid for _, tid in by_record if tid != default_id)
    assert set(verdict["median_us"]) == {default_id, verdict["chosen"]}  # the default and 1 finalist
    assert verdict["median_us"][verdict["chosen"]] == 1.0
    assert verdict["chosen"] not in (default_id, fastest_recorded)  # promoted by the prescreen


def test_final_check_warns_when_the_machine_runs_slow(tuned_logs, tmp_path):
    # A check timed in a slow phase of a shared machine can rank candidates differently from
    # a quiet one: the default running far slower than its record says so, with the remedy.
    import io

    folder = tmp_path / "db"
    shutil.copytree(tuned_logs, folder)
    _, default = _final_check(folder, 10.0, [9.0])
    recorded_us = min(tuning._mean(r.run_secs) for r in _records(folder)
                      if records.trace_id(r.trace) == default) * 1e6
    for factor, warned in [(1.0, False), (tuning.SLOW_PHASE_RATIO * 1.2, True)]:
        stream = io.StringIO()
        _final_check(folder, recorded_us * factor, [recorded_us * factor * 0.9], stream)
        assert ("re-judge later with --trials 0" in stream.getvalue()) == warned, stream.getvalue()


def test_zero_trials_only_rejudges(tuned_logs, tmp_path):
    folder = tmp_path / "db"
    shutil.copytree(tuned_logs, folder)
    (folder / records.CHOICES).unlink()  # as in logs tuned before the final check existed
    before = (folder / records.RECORDS).read_text()
    tuning.tune(SPEC, trials=0, log_dir=folder)
    assert (folder / records.RECORDS).read_text() == before
    verdict = json.loads((folder / records.CHOICES).read_text())["choices"][SPEC.key]
    assert verdict["chosen"] in verdict["median_us"] and len(verdict["median_us"]) >= 2


def test_verdict_decides_over_the_fastest_record(isolated, tuned_logs):
    """A verdict naming a slower-recorded schedule wins: records from different minutes of a
    shared machine are not comparable, the side-by-side verdict is."""
    host = dwconv_tvm.resolve_target("host")
    folder = _install(tuned_logs, isolated / "user", host)
    (folder / records.CHOICES).unlink()
    fastest = records.best_record(SPEC, host)
    assert fastest.default_seconds is None  # no verdict: the fastest record, as recorded
    database = _database(folder)
    ranked = database.get_top_k(database.commit_workload(depthwise_module(SPEC)), 10)
    slower = records.trace_id(ranked[1].trace)
    data = {"choices": {SPEC.key: {"chosen": slower, "default": slower, "median_us": {slower: 12.5}}}}
    (folder / records.CHOICES).write_text(json.dumps(data))
    found = records.best_record(SPEC, host)
    assert records.trace_id(found.schedule.trace) != records.trace_id(fastest.schedule.trace)
    assert found.seconds == pytest.approx(12.5e-6) and found.default_seconds == found.seconds and found.kept_default
    assert dwconv_tvm.compile(SPEC).schedule == f"tuned:user:{records.schedule_fingerprint(found.schedule)}"


@pytest.mark.parametrize("content", ["{not json", '{"choices": [1, 2]}', '{"choices": {"%s": {"chosen": 3}}}'])
def test_damaged_verdicts_fall_back_to_the_fastest_record(isolated, tuned_logs, content):
    host = dwconv_tvm.resolve_target("host")
    folder = _install(tuned_logs, isolated / "user", host)
    (folder / records.CHOICES).write_text(content.replace("%s", SPEC.key))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = records.best_record(SPEC, host)
    assert found.source == "user" and found.default_seconds is None
    if "chosen" not in content:
        assert any("unreadable tuning verdicts" in str(w.message) for w in caught)


def test_tuning_sets_damaged_verdicts_aside(tuned_logs, tmp_path):
    folder = tmp_path / "db"
    shutil.copytree(tuned_logs, folder)
    (folder / records.CHOICES).write_text("{torn")
    with pytest.warns(UserWarning, match="set aside"):
        _final_check(folder, 10.0, [12.0])
    assert [p.read_text() for p in folder.glob(f"{records.CHOICES}.unusable-*")] == ["{torn"]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(specs=[], trials=4), "specs"),
    (dict(specs=SPEC, trials=-1), "trials"),
    (dict(specs=SPEC, trials=4, target={"kind": "c"}), "No schedule for target kind 'c'"),
    (dict(specs=SPEC, trials=None, time_budget_s=0), "time_budget_s"),
    (dict(specs=SPEC, rpc_tracker="localhost", rpc_key="k"), "host:port"),
    (dict(specs=SPEC, rpc_tracker="localhost:9190"), "rpc_key"),
    (dict(specs=SPEC, rpc_key="k"), "rpc_tracker"),
    (dict(specs=SPEC, rpc_tracker="localhost:99999", rpc_key="k"), "port 1-65535"),
    (dict(specs=SPEC, target="aarch64"), "cannot run on this machine"),
    # A CPU with extensions this one lacks (no CPU has both FMA4 and AVX512-FP16).
    (dict(specs=SPEC, target={"kind": "llvm", "mcpu": "sapphirerapids" if HOST_FEATURES.get("FMA4") else "bdver2"}),
     "cannot run on this machine"),
])
def test_tune_argument_errors(kwargs, needle, tmp_path):
    with pytest.raises(ValueError, match=needle):
        tuning.tune(log_dir=tmp_path, **kwargs)


def test_model_sets():
    from dwconv_tvm.models import model_specs

    mobilenet = model_specs("mobilenet_v2")
    assert len(mobilenet) == 10 and len(set(mobilenet)) == 10
    assert mobilenet[0].input_shape == (1, 112, 112, 32) and not mobilenet[0].bias
    assert {s.kernel for s in model_specs("efficientnet_b0")} == {(3, 3), (5, 5)}
    v1 = model_specs("mobilenet_v1")
    assert len(v1) == 9 and len(set(v1)) == 9 and v1[-1].input_shape == (1, 7, 7, 1024)
    assert all(s.channels & (s.channels - 1) == 0 for s in v1)  # the L1-aliasing set
    with pytest.raises(ValueError, match="Unknown model"):
        model_specs("resnet50")


def _cli(*args, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "dwconv_tvm.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, **kwargs)


def test_cli_tune_search_phase_curve_then_info(tmp_path):
    env = {**os.environ, "DWCONV_TVM_TUNING_LOGS": str(tmp_path / "logs"), "DWCONV_TVM_CACHE": str(tmp_path / "cache")}
    layer = ["--input-shape", "1,8,8,16", "--kernel-size", "3", "--padding", "same"]
    # The template's combinations, then MetaSchedule's search for 2 more trials (only the search
    # can count the last two).
    swept = _space(SMALL)  # the layer above
    total = swept + 2
    tune = _cli("tune", *layer, "--trials", str(total), "--curve", str(tmp_path / "curve.png"), env=env)
    assert tune.returncode == 0, tune.stderr
    assert f"{total}/{total} trials" in tune.stderr and "best" in tune.stderr  # the progress line
    assert "Total trials" not in tune.stdout + tune.stderr  # MetaSchedule's tables stay out
    assert "side by side: " in tune.stderr  # the final check's verdict
    folder = tmp_path / "logs" / dwconv_tvm.target_key("host")
    assert len(_records(folder)) >= swept
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    (points,) = json.loads((tmp_path / "curve.png.json").read_text()).values()
    trials = [p["trial"] for p in points]  # the search's re-measured candidates add points at the last trial
    assert trials == sorted(trials) and sorted(set(trials)) == list(range(1, total + 1))
    best = [p["best_us"] for p in points]
    assert best == sorted(best, reverse=True)  # best so far never gets worse
    info = _cli("info", *layer, env=env)
    assert info.returncode == 0, info.stderr
    assert "direct" in info.stdout or "Winograd" in info.stdout  # the algorithm that runs
    # The final check timed the fastest records beside the default; its verdict is what applies.
    assert "side by side with the default's" in info.stdout or "kept by the side-by-side check" in info.stdout
    assert len(json.loads((folder / records.CHOICES).read_text())["choices"]) == 1
    bad = _cli("tune", "--model", "nope", env=env)
    assert bad.returncode == 2 and "Unknown model" in bad.stderr
    bad = _cli("tune", *layer, "--time-budget", "soon", env=env)
    assert bad.returncode == 2 and "--time-budget" in bad.stderr


def test_torn_log_line_is_skipped_and_repaired(isolated, tuned_logs, rng):
    # What a tuner killed in the middle of writing a record leaves behind.
    host = dwconv_tvm.resolve_target("host")
    folder = _install(tuned_logs, isolated / "user", host)
    complete = (folder / records.RECORDS).read_text().splitlines()
    with open(folder / records.RECORDS, "a") as f:
        f.write('[0, [[["SampleCategor')
    with pytest.warns(UserWarning, match="damaged"):
        op = dwconv_tvm.compile(SPEC)
    assert op.schedule.startswith("tuned:user:")  # the complete records still apply
    _check_numerics(op, rng)
    with pytest.warns(UserWarning, match="Dropped 1 damaged"):
        assert records.repair(folder) == 1
    assert (folder / records.RECORDS).read_text().splitlines() == complete
    assert records.repair(folder) == 0


def test_foreign_file_in_log_folder_is_skipped(isolated, tuned_logs):
    host = dwconv_tvm.resolve_target("host")
    folder = _install(tuned_logs, isolated / "user", host)
    (folder / records.WORKLOADS).write_text("this is not a tuning log\n")
    with pytest.warns(UserWarning) as caught:
        op = dwconv_tvm.compile(SPEC)
    messages = " ".join(str(w.message) for w in caught)
    assert "damaged" in messages and "unusable tuning log" in messages
    assert op.schedule == "default:llvm"  # nothing usable: the hand-written default


def test_tune_sets_an_unusable_log_aside(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    (folder / records.WORKLOADS).write_text("not a tuning log\n")
    (folder / records.RECORDS).write_text('[0, ["foreign"]]\n')
    with pytest.warns(UserWarning) as caught:
        tuning._open_for_tuning(folder)
    messages = " ".join(str(w.message) for w in caught)
    assert "Dropped 1 damaged" in messages and "renamed" in messages
    assert sorted(p.name.split(".unusable-")[0] for p in folder.glob("*.unusable-*")) == sorted([records.RECORDS, records.WORKLOADS])


def _spawn_tuner(folder, *args, shape="1,30,30,32", stderr=subprocess.PIPE):
    env = {**os.environ, "DWCONV_TVM_CACHE": str(folder.parent / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "dwconv_tvm.cli", "tune", "--input-shape", shape, "--padding", "same",
         "--log-dir", str(folder), *args],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
    )


def _wait_for_records(folder, count, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = folder / records.RECORDS
        if path.is_file() and len(path.read_text().splitlines()) >= count:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {count} records in {timeout} s")


BIG = DepthwiseSpec.from_keras((1, 30, 30, 32), 3, 1, "same")  # 100 template combinations on znver4


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_tuner_keeps_a_loadable_database(sig, tmp_path, isolated, rng):
    folder = isolated / "user" / dwconv_tvm.target_key("host")
    proc = _spawn_tuner(folder, "--trials", "200")
    _wait_for_records(folder, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:  # Ctrl-C: a clean exit that says where the records are
        assert proc.returncode == 130 and "interrupted" in err and str(folder) in err
    else:
        assert proc.returncode == -signal.SIGKILL
    kept = len(_records(folder))
    assert kept >= 3
    op = dwconv_tvm.compile(BIG)
    assert op.schedule.startswith("tuned:user:")
    _check_numerics(op, rng)
    tuning.tune(BIG, trials=2, log_dir=folder)  # resumes: the kept records stay, two are added
    assert len(_records(folder)) == kept + 2


def test_a_second_tuner_waits_for_the_lock(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    log = tmp_path / "stderr.txt"
    with open(folder / ".lock", "a+") as held, open(log, "w") as stderr:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another tuner would
        proc = _spawn_tuner(folder, "--trials", "2", shape="1,8,8,16", stderr=stderr)
        deadline = time.monotonic() + 120
        while "waiting for another tuner" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(0.5)
        assert not (folder / records.RECORDS).exists()  # nothing written while the lock is held
    proc.communicate(timeout=300)
    assert proc.returncode == 0, log.read_text()
    assert len(_records(folder)) == 2


def test_two_tuners_on_one_folder(tmp_path, isolated, rng):
    folder = isolated / "user" / dwconv_tvm.target_key("host")
    small = DepthwiseSpec.from_keras((1, 8, 8, 16), 3, 1, "same")
    procs = [_spawn_tuner(folder, "--trials", "6"), _spawn_tuner(folder, "--trials", "6", shape="1,8,8,16"),
             _spawn_tuner(folder, "--trials", "3", shape="1,8,8,16")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert len(_records(folder)) == 15
    for spec in (BIG, small):  # each record still belongs to its own workload
        op = dwconv_tvm.compile(spec)
        assert op.schedule.startswith("tuned:user:")
        _check_numerics(op, rng)


def test_tune_through_an_rpc_tracker(tmp_path):
    from tvm.s_tir.meta_schedule.testing.local_rpc import LocalRPC

    with LocalRPC(tracker_key="dwconv-test", silent=True) as rpc:
        tuning.tune(SPEC, "host", trials=3, log_dir=tmp_path / "db",
                    rpc_tracker=f"{rpc.tracker_host}:{rpc.tracker_port}", rpc_key="dwconv-test")
    measured = _records(tmp_path / "db")
    assert len(measured) == 3 and all(float(s) > 0 for r in measured for s in r.run_secs)
    verdict = json.loads((tmp_path / "db" / records.CHOICES).read_text())["choices"][SPEC.key]  # timed remotely too
    assert len(verdict["median_us"]) == 3 and all(us > 0 for us in verdict["median_us"].values())


def test_tune_stops_with_the_records_kept_when_the_device_goes_away(tmp_path, monkeypatch):
    # The runner's request for the next session waited at the tracker for ever once the server
    # had died: the tuner hung with no message. The sweep's second group of candidates now finds
    # the key gone and the run ends with a ConnectionError, the first group's records kept.
    from tvm.s_tir.meta_schedule.testing.local_rpc import LocalRPC

    from dwconv_tvm import tracker

    monkeypatch.setattr(tracker, "REGISTRATION_WAIT_S", 1.0)
    monkeypatch.setattr(tracker, "WATCH_INTERVAL_S", 0.2)
    monkeypatch.setattr(tuning, "SWEEP_GROUP", 2)
    measured_groups = []
    side_by_side = tuning._ThroughRunner.side_by_side

    with LocalRPC(tracker_key="dwconv-test", silent=True) as rpc:
        def then_lose_the_device(self, mods, rounds):
            samples = side_by_side(self, mods, rounds)
            measured_groups.append(samples)
            rpc.server.terminate()
            return samples

        monkeypatch.setattr(tuning._ThroughRunner, "side_by_side", then_lose_the_device)
        earlier_workers = _popen_workers()  # of other tests' pools, not yet collected
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=r"no device is registered under `rpc_key`='dwconv-test'.*kept in"):
            tuning.tune(SPEC, "host", trials=4, log_dir=tmp_path / "db",
                        rpc_tracker=f"{rpc.tracker_host}:{rpc.tracker_port}", rpc_key="dwconv-test")
        assert time.monotonic() - start < 120
    assert len(measured_groups) == 2 and all(measured_groups[0]) and not any(measured_groups[1])
    assert len(_records(tmp_path / "db")) == 2  # the first group's, in a database that loads
    assert _popen_workers() <= earlier_workers  # the runner's worker, waiting at the tracker, was ended


def _popen_workers() -> set[str]:
    """Process ids of this process's TVM pool workers (from /proc: no procps needed)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
            if parent == os.getpid() and b"popen_worker" in (stat.parent / "cmdline").read_bytes():
                found.add(stat.parent.name)
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tune_names_a_tracker_it_cannot_use_before_tuning(tmp_path, monkeypatch):
    # MetaSchedule's runner reports these in worker threads, per candidate, and the run ended
    # with no records: the tuner checks the tracker once, up front.
    import socket

    from dwconv_tvm import tracker
    from tvm.s_tir.meta_schedule.testing.local_rpc import LocalRPC

    monkeypatch.setattr(tracker, "REGISTRATION_WAIT_S", 1.0)
    folder = tmp_path / "db"
    with pytest.raises(ValueError, match="Cannot reach a TVM RPC tracker at `rpc_tracker`"):
        tuning.tune(SPEC, "host", trials=1, log_dir=folder, rpc_tracker=f"127.0.0.1:{_free_port()}", rpc_key="k")
    with socket.create_server(("127.0.0.1", 0)) as impostor:  # something else listens there
        impostor_port = impostor.getsockname()[1]

        def answer_garbage():
            conn, _ = impostor.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        with pytest.raises(ValueError, match="not as a TVM RPC tracker"):
            tuning.tune(SPEC, "host", trials=1, log_dir=folder, rpc_tracker=f"127.0.0.1:{impostor_port}",
                        rpc_key="k")
        thread.join(timeout=10)
    with LocalRPC(tracker_key="dwconv-test", silent=True) as rpc:
        with pytest.raises(ValueError, match=r"under `rpc_key`='other'.*\['dwconv-test'\]"):
            tuning.tune(SPEC, "host", trials=1, log_dir=folder, rpc_tracker=f"{rpc.tracker_host}:{rpc.tracker_port}",
                        rpc_key="other")
        # A key that a client asked for is in the tracker's queue list, but no server serves it:
        # a tuner requesting it would wait for ever.
        from tvm import rpc as tvm_rpc

        waiting = tvm_rpc.connect_tracker(rpc.tracker_host, rpc.tracker_port)

        def ask_for_ghost():
            # Ends when the tracker closes at the end of the test (one try, no reconnecting):
            # a request left waiting would log into pytest's closed streams at exit.
            with contextlib.suppress(RuntimeError):
                waiting.request("ghost", session_timeout=1, max_retry=1)

        asking = threading.Thread(target=ask_for_ghost, daemon=True)
        asking.start()
        observer = tvm_rpc.connect_tracker(rpc.tracker_host, rpc.tracker_port)  # its own connection
        deadline = time.monotonic() + 10
        while "ghost" not in observer.summary()["queue_info"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ghost" in observer.summary()["queue_info"]
        with pytest.raises(ValueError, match=r"under `rpc_key`='ghost'.*\['dwconv-test'\]"):
            tuning.tune(SPEC, "host", trials=1, log_dir=folder, rpc_tracker=f"{rpc.tracker_host}:{rpc.tracker_port}",
                        rpc_key="ghost")
    asking.join(timeout=30)
    assert not asking.is_alive()
    assert not folder.exists()  # nothing was started


def test_tracker_keys_are_those_of_servers_and_proxied_devices():
    # An RPC proxy registers as `server:proxy[KEY,...]`; clients' requests add queue entries
    # for keys that no server may serve.
    import socket
    import struct

    from tvm.rpc import base

    from dwconv_tvm import tracker

    summary = {"queue_info": {"asked-only": {"free": 0, "pending": 1}, "board": {"free": 1, "pending": 0}},
               "server_info": [{"key": "server:board", "addr": ["10.0.0.2", 9091]},
                               {"key": "server:proxy[phone,tablet]", "addr": [None, 9090]}]}
    with socket.create_server(("127.0.0.1", 0)) as fake:
        def answer():
            for _ in range(4):
                conn, _ = fake.accept()
                with conn:
                    base.recvall(conn, 4)
                    conn.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
                    base.recvjson(conn)
                    base.sendjson(conn, [base.TrackerCode.SUCCESS, summary])

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        port = fake.getsockname()[1]
        for key in ("board", "phone", "tablet"):
            assert tracker.missing_device("127.0.0.1", port, key) is None
        assert "no device is registered under `rpc_key`='asked-only'" in tracker.missing_device("127.0.0.1", port, "asked-only")
        thread.join(timeout=10)
    assert "Cannot reach" in tracker.missing_device("127.0.0.1", port, "board")  # nothing listens now


def test_tune_names_a_log_or_curve_folder_it_cannot_write(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="`log_dir` must be a folder this process can write to"):
        tuning.tune(SPEC, "host", trials=0, log_dir=blocker / "db")
    with pytest.raises(ValueError, match="The folder of `curve` must be a folder"):
        tuning.tune(SPEC, "host", trials=0, log_dir=tmp_path / "db", curve=blocker / "curve.png")
    assert not (tmp_path / "db").exists()  # checked before tuning


def test_in_process_measurer_times_aligned_arguments():
    # As MetaSchedule's runner and framework tensors are: NumPy's own 16-byte alignment, random
    # per run, slowed some candidates more than others (up to 1.25x) and skewed the verdicts.
    measurer = tuning._InProcess(depthwise_module(SPEC), dwconv_tvm.resolve_target("host"))
    assert len(measurer.args) == 4  # x, kernel, bias, out
    assert all(a.ctypes.data % 64 == 0 and a.flags.c_contiguous for a in measurer.args)


@pytest.mark.parametrize("key", records.shipped_keys())
def test_every_shipped_verdict_fits_the_current_template(key, monkeypatch, tmp_path):
    # A record whose trace no longer applies (a template change) is skipped silently at
    # compile time, and the layer runs its default: the shipped logs must all still apply.
    from dwconv_tvm.models import model_specs

    monkeypatch.setenv("DWCONV_TVM_TUNING_LOGS", str(tmp_path))  # no user logs
    target = dwconv_tvm.resolve_target({"kind": "llvm", "mcpu": key.removeprefix("llvm-"), "num-cores": 2})
    assert dwconv_tvm.target_key(target) == key
    specs = [*model_specs("mobilenet_v2"), *model_specs("mobilenet_v2", batch=8), *model_specs("efficientnet_b0")]

    def shipped(spec):
        return getattr(records.best_record(spec, target), "source", None) == "shipped"

    # MobileNetV1 is shipped for some keys only; where any of its own layers is, all must be.
    v1_only = [spec for spec in model_specs("mobilenet_v1") if spec not in specs]
    if any(shipped(spec) for spec in v1_only):
        specs += v1_only
    unapplied = [spec.key for spec in dict.fromkeys(specs) if not shipped(spec)]
    assert not unapplied


def test_outer_frames_match_inspect_stack():
    import inspect

    def caller():  # both on one line: the same frames at the same line numbers
        return tuning._outer_frames(), inspect.stack()

    cheap, full = caller()
    assert len(cheap) == len(full) > 5  # pytest's frames above this test's
    for ours, theirs in zip(cheap, full):
        assert (ours.frame, ours.filename, ours.lineno, ours.function, ours.code_context, ours.index) == (
            theirs.frame, theirs.filename, theirs.lineno, theirs.function, theirs.code_context, theirs.index)
    assert cheap[0].function == "caller" and "_outer_frames()" in cheap[0].code_context[0]


def test_tensor_intrinsics_import_in_a_fresh_process_leaves_inspect_as_it_was():
    # What the search imports before MetaSchedule's TuneContext would: registered, and with
    # inspect.stack restored afterwards.
    check = (
        "import inspect, sys; stack = inspect.stack\n"
        "from dwconv_tvm import tuning\n"
        "tuning._import_tensor_intrinsics()\n"
        "assert inspect.stack is stack and 'tvm.s_tir.tensor_intrin' in sys.modules\n"
        "from tvm.s_tir import TensorIntrin\n"
        "from tvm.s_tir.tensor_intrin import x86\n"
        "TensorIntrin.get(x86.VNNI_DOT_16x4_INTRIN)\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
