"""`dwconv-tvm` command line: demo, bench, info, targets."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return 0 if run(target=args.target) else 1


def _bench(args: argparse.Namespace) -> int:
    import json
    import platform
    from pathlib import Path

    import tvm

    from . import bench
    from .targets import resolve_target, target_key

    peers = tuple(p for p in args.peers.split(",") if p)
    batches = tuple(int(b) for b in args.batches.split(","))
    rows = bench.run(batches=batches, threads=args.threads, rounds=args.rounds, peers=peers, target=args.target)
    overhead = bench.layer_overhead_us()
    table = bench.markdown(rows)
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"cpu-{target_key(tgt)}"
    stem.with_suffix(".md").write_text(header + table + footer)
    stem.with_suffix(".json").write_text(json.dumps({"rows": rows, "overhead": overhead}, indent=1))
    bench.plot(rows, stem.with_suffix(".png"))
    print(f"wrote {stem}.md, .json and .png")
    return 0


def _info(args: argparse.Namespace) -> int:
    import tvm

    from . import __version__
    from .cache import cache_root
    from .targets import resolve_target, target_key

    tgt = resolve_target(args.target)
    print(f"dwconv-tvm {__version__}, TVM {tvm.__version__}")
    print(f"target: {tgt}")
    print(f"target key: {target_key(tgt)}")
    print(f"cache: {cache_root()}")
    return 0


def _targets(_: argparse.Namespace) -> int:
    from .targets import NAMED_TARGETS, resolve_target

    for name, text in NAMED_TARGETS.items():
        resolved = resolve_target(name)
        print(f"{name:8s} {text}\n         {resolved}")
    print("any TVM target JSON dict or string is accepted as well")
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
    bench_cmd.add_argument("--out", default="benchmarks/results")
    bench_cmd.set_defaults(func=_bench)
    info = sub.add_parser("info", help="versions, target, cache folder")
    info.add_argument("--target", default="host")
    info.set_defaults(func=_info)
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
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"dwconv-tvm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
