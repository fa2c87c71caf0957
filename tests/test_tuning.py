"""Tuning with MetaSchedule (tiny trial counts, temporary log folders) and applying records."""

import shutil

import numpy as np
import pytest

import dwconv_tvm
from dwconv_tvm import DepthwiseSpec, build, tuning
from reference import ACTIVATIONS, depthwise

SPEC = DepthwiseSpec.from_keras((1, 10, 10, 32), 3, 1, "same", activation="relu6")


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
    monkeypatch.setattr(tuning, "shipped_log_dir", lambda target: tmp_path / "shipped" / dwconv_tvm.target_key(target))
    monkeypatch.setattr(build, "_memory", {})
    return tmp_path


def _install(logs, root, target):
    destination = root / dwconv_tvm.target_key(target)
    shutil.copytree(logs, destination)
    return destination


def _check_numerics(op, rng):
    x = rng.standard_normal(SPEC.input_shape).astype(np.float32)
    k = rng.standard_normal(SPEC.kernel_shape).astype(np.float32)
    b = rng.standard_normal(SPEC.bias_shape).astype(np.float32)
    np.testing.assert_allclose(op(x, k, b), ACTIVATIONS["relu6"](depthwise(x, k, b, padding="same")), atol=1e-4)


def test_database_files_and_seeded_default(tuned_logs):
    assert (tuned_logs / tuning.WORKLOADS).is_file() and (tuned_logs / tuning.RECORDS).is_file()
    lines = (tuned_logs / tuning.RECORDS).read_text().splitlines()
    assert len(lines) >= 2  # the measured default plus searched candidates


def test_no_records_means_default(isolated):
    assert tuning.best_record(SPEC, dwconv_tvm.resolve_target("host")) is None
    assert dwconv_tvm.compile(SPEC).schedule == "default:llvm"


def test_user_records_are_applied(isolated, tuned_logs, rng):
    host = dwconv_tvm.resolve_target("host")
    _install(tuned_logs, isolated / "user", host)
    sch, source, seconds = tuning.best_record(SPEC, host)
    assert source == "user" and seconds > 0
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


def test_records_are_per_target(isolated, tuned_logs):
    _install(tuned_logs, isolated / "user", dwconv_tvm.resolve_target("host"))
    other = dwconv_tvm.resolve_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    assert tuning.best_record(SPEC, other) is None  # another CPU never gets this machine's records


@pytest.mark.parametrize("kwargs,needle", [
    (dict(specs=[], trials=4), "specs"),
    (dict(specs=SPEC, trials=0), "trials"),
    (dict(specs=SPEC, trials=4, target={"kind": "c"}), "template"),
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
    with pytest.raises(ValueError, match="Unknown model"):
        model_specs("resnet50")


def test_cli_tune_then_info(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "DWCONV_TVM_TUNING_LOGS": str(tmp_path / "logs"), "DWCONV_TVM_CACHE": str(tmp_path / "cache")}
    layer = ["--input-shape", "1,8,8,16", "--kernel-size", "3", "--padding", "same"]
    tune = subprocess.run([sys.executable, "-m", "dwconv_tvm.cli", "tune", *layer, "--trials", "2"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert tune.returncode == 0, tune.stderr
    assert "2/2 trials" in tune.stderr and "best" in tune.stderr  # the progress line
    assert "Total trials" not in tune.stdout + tune.stderr  # MetaSchedule's tables stay out
    info = subprocess.run([sys.executable, "-m", "dwconv_tvm.cli", "info", *layer],
                          capture_output=True, text=True, env=env, timeout=600)
    assert info.returncode == 0, info.stderr
    assert "tuned (user logs), recorded" in info.stdout
    bad = subprocess.run([sys.executable, "-m", "dwconv_tvm.cli", "tune", "--model", "nope"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "Unknown model" in bad.stderr


def test_torn_log_line_is_skipped_and_repaired(isolated, tuned_logs, rng):
    # What a tuner killed in the middle of writing a record leaves behind.
    host = dwconv_tvm.resolve_target("host")
    folder = _install(tuned_logs, isolated / "user", host)
    complete = (folder / tuning.RECORDS).read_text().splitlines()
    with open(folder / tuning.RECORDS, "a") as f:
        f.write('[0, [[["SampleCategor')
    with pytest.warns(UserWarning, match="damaged"):
        op = dwconv_tvm.compile(SPEC)
    assert op.schedule.startswith("tuned:user:")  # the complete records still apply
    _check_numerics(op, rng)
    with pytest.warns(UserWarning, match="Dropped 1 damaged"):
        assert tuning.repair(folder) == 1
    assert (folder / tuning.RECORDS).read_text().splitlines() == complete
    assert tuning.repair(folder) == 0


def test_foreign_file_in_log_folder_is_skipped(isolated, tuned_logs):
    host = dwconv_tvm.resolve_target("host")
    folder = _install(tuned_logs, isolated / "user", host)
    (folder / tuning.WORKLOADS).write_text("this is not a tuning log\n")
    with pytest.warns(UserWarning) as caught:
        op = dwconv_tvm.compile(SPEC)
    messages = " ".join(str(w.message) for w in caught)
    assert "damaged" in messages and "unusable tuning log" in messages
    assert op.schedule == "default:llvm"  # nothing usable: the hand-written default


def test_tune_sets_an_unusable_log_aside(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    (folder / tuning.WORKLOADS).write_text("not a tuning log\n")
    (folder / tuning.RECORDS).write_text('[0, ["foreign"]]\n')
    with pytest.warns(UserWarning) as caught:
        tuning._open_for_tuning(folder)
    messages = " ".join(str(w.message) for w in caught)
    assert "Dropped 1 damaged" in messages and "renamed" in messages
    assert sorted(p.name.split(".unusable-")[0] for p in folder.glob("*.unusable-*")) == sorted([tuning.RECORDS, tuning.WORKLOADS])
