"""`dwconv-tvm` command line: demo, info, targets."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return 0 if run(target=args.target) else 1


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
