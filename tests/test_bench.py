"""The benchmark's bookkeeping on one small shape (its speed figures come from `make bench`)."""

import pytest

from dwconv_tvm import bench


def test_bench_row_on_one_shape():
    shape = bench.MOBILENET_V2[-1]  # 7x7x960
    (row,) = bench.run(batches=(1,), shapes=[shape], rounds=1, budget_s=0.005, settle_s=0.0, peers=())
    assert row["shape"] == "7x7x960 k3 s1" and row["batch"] == 1
    assert row["algorithm"] in ("direct", "winograd")  # what the layer's schedule computes
    assert row["max_error"] < 1e-4  # the timed layer computes the right numbers
    assert set(row["us"]) == {"ours", "copy"} and min(row["us"].values()) > 0
    assert 0 < row["call_floor_us"] < row["fma_floor_us"] < row["us"]["ours"] * 10
    assert row["roof_fraction"] == max(row["us"]["copy"], row["fma_floor_us"]) / row["us"]["ours"]
    assert "7x7x960" in bench.markdown([row])


def test_bench_times_our_layer_on_torch_tensors_beside_torch():
    pytest.importorskip("torch")
    (row,) = bench.run(batches=(1,), shapes=[bench.MOBILENET_V2[-1]], rounds=1, budget_s=0.005, settle_s=0.0,
                       peers=("torch",))
    assert set(row["us"]) == {"ours", "copy", "torch", "ours_torch"}
    assert row["torch_input_vs_torch"] == row["us"]["torch"] / row["us"]["ours_torch"]
    # The ceiling: what a kernel at the roof would gain over the best peer of the same run.
    assert row["ceiling_vs_best_peer"] == row["us"]["torch"] / max(row["us"]["copy"], row["fma_floor_us"])
    table = bench.markdown([row])
    assert "ours on torch tensors µs" in table and "on torch tensors, geomean vs torch" in table
    assert "roof vs best peer" in table and "a kernel at the roof would reach" in table


def test_fma_floor_is_the_multiply_adds_at_the_rate_plus_a_call():
    spec = bench.DepthwiseSpec.from_keras((1, 7, 7, 960), 3, padding="same")
    fmas = 7 * 7 * 960 * 9 / 16  # vector FMAs of 16 lanes
    assert bench.fma_floor_us(spec, 1e9, 16) == pytest.approx(fmas / 1e9 * 1e6)
    call = bench.call_floor_us(2)
    assert 0 < call < 1000  # microseconds
    assert bench.fma_floor_us(spec, 1e9, 16, call) == pytest.approx(fmas / 1e9 * 1e6 + call)


def test_alternating_order_reverses_every_other_round():
    from dwconv_tvm.timing import alternating_order

    assert alternating_order(3, 3) == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    assert alternating_order(2, 0) == []


def test_model_sets_as_bench_shapes():
    shapes = bench.model_shapes("mobilenet_v1")
    assert len(shapes) == 9 and {s.model for s in shapes} == {"MobileNetV1"}
    assert shapes[-1].label == "7x7x1024 k3 s1"
    assert bench.model_shapes("mobilenet_v2") == bench.MOBILENET_V2
    with pytest.raises(ValueError, match="Unknown model 'resnet50'"):
        bench.model_shapes("resnet50")


def test_bench_summarizes_the_model_it_timed():
    pytest.importorskip("torch")
    shape = bench.model_shapes("mobilenet_v1")[-1]
    rows = bench.run(batches=(1,), shapes=[shape], rounds=1, budget_s=0.005, settle_s=0.0, peers=("torch",))
    assert "- batch 1, MobileNetV1: geomean speed-up" in bench.markdown(rows, summarize=("MobileNetV1",))
    assert "geomean" not in bench.markdown(rows)  # the standard summary is MobileNetV2's


def test_bench_command_rejects_an_unknown_model(tmp_path, capsys):
    from dwconv_tvm import cli

    assert cli.main(["bench", "--model", "resnet50", "--out", str(tmp_path)]) == 2
    assert "Unknown model 'resnet50'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags,needle", [
    (["--batches", "1,x"], "`--batches` must be comma-separated integers"),
    (["--out", "{blocker}/results"], "`--out` must be a folder this process can create"),
])
def test_bench_command_names_a_bad_argument_before_timing(flags, needle, tmp_path, capsys):
    from dwconv_tvm import cli

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    flags = [f.format(blocker=blocker) for f in flags]
    assert cli.main(["bench", "--model", "mobilenet_v1", "--out", str(tmp_path / "out"), *flags]) == 2
    assert needle in capsys.readouterr().err


def test_layer_overhead_times_layer_and_kernel_in_turns(monkeypatch):
    # Both are timed in alternating repeats (one after the other, a slow phase over the
    # kernel's repeats once gave a negative overhead); each figure is its best repeat.
    import timeit

    timed = []
    real = timeit.timeit
    monkeypatch.setattr(timeit, "timeit", lambda call, number: timed.append(call) or real(call, number=number))
    figures = bench.layer_overhead_us(repeats=3, number=50)
    assert len(timed) == 6 and len({timed[0], timed[1]}) == 2 and timed[0::2] == [timed[0]] * 3
    assert figures["overhead_us"] == pytest.approx(figures["layer_us"] - figures["kernel_us"])
    assert 0 < figures["kernel_us"] and 0 < figures["layer_us"]
