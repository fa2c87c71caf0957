"""`dwconv-tvm` command line: demo, bench, tune, info, compile, targets."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return 0 if run(target=args.target) else 1


def _bench(args: argparse.Namespace) -> int:
    import json
    import platform

    import tvm

    from . import bench, cache
    from .targets import resolve_target, target_key

    peers = tuple(p for p in args.peers.split(",") if p)
    batches = _int_list(args.batches, "batches")
    shapes = bench.model_shapes(args.model) if args.model else None
    out = cache.writable_folder(Path(args.out), f"`--out` must be a folder this process can create and write to. "
                                                f"Received: {args.out!r}")
    rows = bench.run(batches=batches, shapes=shapes, threads=args.threads, rounds=args.rounds, peers=peers,
                     target=args.target)
    overhead = bench.layer_overhead_us()
    table = bench.markdown(rows) if shapes is None else bench.markdown(rows, summarize=(shapes[0].model,))
    tgt = resolve_target(args.target)
    header = (
        f"Target `{tgt}` on {platform.processor() or platform.machine()}, {args.threads} threads, fp32, "
        f"medians of {args.rounds} interleaved rounds; TVM {tvm.__version__}.\n\n"
    )
    footer = (
        f"\nLayer per-call overhead on a (1, 4, 4, 8) input: {overhead['overhead_us']:.2f} us "
        f"(layer call {overhead['layer_us']:.2f} us, bare kernel call {overhead['kernel_us']:.2f} us).\n"
    )
    print(header + table + footer)
    stem = out / f"cpu-{target_key(tgt)}{'-' + args.model if args.model else ''}"
    # Atomically, as every file here: an interrupt leaves the previous run's results whole.
    cache.atomic_write(stem.with_suffix(".md"), lambda tmp: tmp.write_text(header + table + footer))
    cache.atomic_write(stem.with_suffix(".json"),
                       lambda tmp: tmp.write_text(json.dumps({"rows": rows, "overhead": overhead}, indent=1)))
    bench.plot(rows, stem.with_suffix(".png"))
    print(f"wrote {stem}.md, .json and .png")
    return 0


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"`--{name}` must be comma-separated integers. Received: {text!r}") from None


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload (a model set, or one layer)")
    group.add_argument("--model", help="mobilenet_v2, mobilenet_v1 or efficientnet_b0: their depthwise layers at 224x224")
    group.add_argument("--input-shape", help="one layer's input shape, e.g. 1,112,112,32")
    group.add_argument("--kernel-size", default="3")
    group.add_argument("--strides", default="1")
    group.add_argument("--padding", default="valid")
    group.add_argument("--depth-multiplier", type=int, default=1)
    group.add_argument("--data-format", default="channels_last")
    group.add_argument("--dilation-rate", default="1")
    group.add_argument("--activation", default=None, help="a fusable Keras activation name")
    group.add_argument("--no-bias", action="store_true")
    group.add_argument("--dtype", default="float32")
    group.add_argument("--batch", type=int, default=1, help="batch size for --model")


def _specs_from_args(args: argparse.Namespace) -> list:
    from .models import model_specs
    from .spec import DepthwiseSpec

    if args.model and args.input_shape:
        raise ValueError("Give either `--model` or `--input-shape`, not both.")
    if args.model:
        return model_specs(args.model, batch=args.batch, dtype=args.dtype, data_format=args.data_format)
    if not args.input_shape:
        raise ValueError("Give `--model NAME` or `--input-shape N,H,W,C` (with the layer's arguments).")

    def pair(text: str, name: str):
        values = _int_list(text, name)
        return values[0] if len(values) == 1 else values

    return [DepthwiseSpec.from_keras(
        _int_list(args.input_shape, "input-shape"), pair(args.kernel_size, "kernel-size"),
        pair(args.strides, "strides"), args.padding, args.depth_multiplier, args.data_format,
        pair(args.dilation_rate, "dilation-rate"), not args.no_bias,
        None if args.activation in (None, "linear") else args.activation, args.dtype,
    )]


def _duration_s(text: str | None) -> float | None:
    """Seconds from '900', '900s', '15m' or '1.5h'."""
    if text is None:
        return None
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:].lower())
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"`--time-budget` must be a positive duration such as 900, 900s, 15m or 1h. Received: {text!r}")
    return seconds


def _tune(args: argparse.Namespace) -> int:
    from .targets import resolve_target
    from .records import user_log_dir
    from .tuning import tune

    specs = _specs_from_args(args)
    budget = _duration_s(args.time_budget)
    trials = args.trials if args.trials is not None or budget is not None else 64
    folder = Path(args.log_dir) if args.log_dir else user_log_dir(resolve_target(args.target))
    try:
        tune(specs, args.target, trials=trials, time_budget_s=budget, log_dir=folder, rpc_tracker=args.rpc_tracker,
             rpc_key=args.rpc_key, progress=sys.stderr, curve=args.curve)
    except KeyboardInterrupt:
        print(f"\ninterrupted; every record measured so far is kept in {folder}", file=sys.stderr)
        return 130
    print(f"tuning records: {folder}")
    if args.curve:
        print(f"tuning curve: {args.curve} (data: {args.curve}.json)")
    return 0


def _info(args: argparse.Namespace) -> int:
    import shlex

    import tvm

    from . import __version__, prefetch
    from .build import schedule_for, template_for
    from .cache import cache_root
    from .targets import resolve_target, target_key
    from .records import best_record, has_shipped_logs, shipped_keys, shipped_log_dir, user_log_dir

    tgt = resolve_target(args.target)
    # Bad layer arguments fail before any line is printed, as in the other commands.
    specs = _specs_from_args(args) if args.model or args.input_shape else []
    if specs:
        template_for(tgt)  # a target kind without a schedule has nothing to report per layer
    print(f"dwconv-tvm {__version__}, TVM {tvm.__version__}")
    print(f"target: {tgt}")
    print(f"target key: {target_key(tgt)}")
    print(f"kernel cache: {cache_root()}")
    print(f"tuning logs: user {user_log_dir(tgt)}, shipped {shipped_log_dir(tgt)}")
    if not has_shipped_logs(tgt):
        # Records of one CPU model are not applied to another; say so rather than leave the
        # user to wonder why every layer runs its default.
        print(f"no shipped logs for {target_key(tgt)} (shipped: {', '.join(shipped_keys()) or 'none'}): untuned "
              "layers run the hand-written defaults; `dwconv-tvm tune --model mobilenet_v2 --time-budget 5m"
              f"{'' if args.target in (None, 'host') else ' --target ' + shlex.quote(str(args.target))}` tunes for it")
    for spec in specs:
        found = best_record(spec, tgt)
        if found is None:
            default, _ = schedule_for(spec, tgt, use_records=False)
            used = f"hand-written default (direct{', input prefetch' if prefetch.marked(default) else ''})"
        else:
            source, _, related = found.source.partition("-")
            via = ", the record of the same convolution with another epilogue" if related else ""
            algorithm = "Winograd F(2,3)" if found.algorithm == "winograd" else "direct"
            if prefetch.marked(found.schedule.mod):
                algorithm += " with input prefetch"
            if found.kept_default:
                used = (f"hand-written default (direct), kept by the side-by-side check ({source} logs{via}), "
                        f"{found.seconds * 1e6:.1f} us")
            elif found.default_seconds is not None:
                used = (f"tuned {algorithm} ({source} logs{via}), {found.seconds * 1e6:.1f} us side by side "
                        f"with the default's {found.default_seconds * 1e6:.1f} us")
            else:
                used = f"tuned {algorithm} ({source} logs{via}), recorded {found.seconds * 1e6:.1f} us"
        print(f"{spec.key}: {used}")
    return 0


def _targets(_: argparse.Namespace) -> int:
    from .targets import NAMED_TARGETS, resolve_target, target_key

    for name, (about, _) in NAMED_TARGETS.items():
        resolved = resolve_target(name)
        print(f"{name:14s} {about}\n{'':14s} key {target_key(resolved)}: {resolved}")
    print("Also: 'cuda:sm_90' (or --arch sm_90), any TVM target string or tag, any TVM target JSON dict.")
    return 0


def _compile(args: argparse.Namespace) -> int:
    import json

    from .deploy import export, read_sidecar
    from .targets import named_target

    specs = _specs_from_args(args)
    if args.model:
        raise ValueError("`compile` builds one layer: give `--input-shape` and the layer's arguments, not `--model`.")
    target = named_target(args.target, args.arch) if args.arch else args.target
    if target is None:
        raise ValueError(f"`--arch` applies to the cuda target only. Received: --target {args.target!r}")
    path = export(specs[0], args.output, target)
    sidecar = read_sidecar(path)
    arguments = ", ".join(f"{a['name']}{tuple(a['shape'])}" for a in sidecar["arguments"])
    print(f"wrote {path} and {path.with_suffix('.json').name}: {sidecar['entry']}({arguments}) {sidecar['spec']['dtype']}, "
          f"schedule {sidecar['schedule']}")
    print(f"target: {json.loads(sidecar['target']) if sidecar['target'].startswith('{') else sidecar['target']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `dwconv-tvm`."""
    parser = argparse.ArgumentParser(prog="dwconv-tvm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compile for this machine, run the built-in examples, check them")
    demo.add_argument("--target", default="host")
    demo.set_defaults(func=_demo)
    bench_cmd = sub.add_parser("bench", help="time the layer vs PyTorch, ONNX Runtime and the bandwidth limit")
    bench_cmd.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    bench_cmd.add_argument("--threads", type=int, default=2)
    bench_cmd.add_argument("--rounds", type=int, default=9)
    bench_cmd.add_argument("--peers", default="torch,onnxruntime,numpy")
    bench_cmd.add_argument("--target", default="host")
    bench_cmd.add_argument("--model", default=None, help="every depthwise layer of a model set (mobilenet_v2, "
                           "mobilenet_v1, efficientnet_b0) instead of the standard set; results as cpu-<key>-<model>")
    bench_cmd.add_argument("--out", default="benchmarks/results")
    bench_cmd.set_defaults(func=_bench)
    tune_cmd = sub.add_parser("tune", help="auto-tune layers for a target with MetaSchedule")
    _add_spec_arguments(tune_cmd)
    tune_cmd.add_argument("--trials", type=int, default=None,
                          help="measured candidates per layer (default 64, or unlimited with --time-budget; "
                               "0: only re-judge the records there side by side)")
    tune_cmd.add_argument("--time-budget", default=None, help="wall time for all layers: 900, 900s, 15m, 1h")
    tune_cmd.add_argument("--target", default="host")
    tune_cmd.add_argument("--log-dir", default=None, help="database folder (default: user logs of the target)")
    tune_cmd.add_argument("--rpc-tracker", default=None, help="host:port of a TVM RPC tracker to measure on")
    tune_cmd.add_argument("--rpc-key", default=None, help="device key registered with the tracker")
    tune_cmd.add_argument("--curve", default=None, help="write the tuning curve (PNG, needs matplotlib) here")
    tune_cmd.set_defaults(func=_tune)
    info = sub.add_parser("info", help="versions, target, folders; per layer, which schedule is used")
    _add_spec_arguments(info)
    info.add_argument("--target", default="host")
    info.set_defaults(func=_info)
    compile_cmd = sub.add_parser("compile", help="compile one layer for a target: a library plus a JSON sidecar")
    _add_spec_arguments(compile_cmd)
    compile_cmd.add_argument("--target", default="host", help="a named target (see `targets`), TVM string or JSON")
    compile_cmd.add_argument("--arch", default=None, help="CUDA arch for --target cuda, e.g. sm_90")
    compile_cmd.add_argument("-o", "--output", required=True, help="the library to write, e.g. dw.so")
    compile_cmd.set_defaults(func=_compile)
    targets = sub.add_parser("targets", help="list named targets")
    targets.set_defaults(func=_targets)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `dwconv-tvm`.

    Args:
        argv: Arguments (default: `sys.argv[1:]`).

    Returns:
        The process exit status.
    """
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below rather than at exit
        return status
    except (ValueError, TypeError) as err:
        print(f"dwconv-tvm: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`dwconv-tvm info | head`): stop quietly, as other Unix tools do.
        # stdout is pointed at /dev/null so that the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the signal
    except OSError as err:  # a file or folder it could not write, a tuning device that went away: no traceback
        print(f"dwconv-tvm: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
