"""Data tools: `python -m foodnet.data {demo} ...`."""

from __future__ import annotations

import argparse
import sys

from foodnet.data.demo import make_demo_dataset


def _demo(args: argparse.Namespace) -> int:
    paths = make_demo_dataset(args.out, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foodnet.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="write the synthetic 20-class demo dataset")
    demo.add_argument("--out", required=True, help="folder for images/, manifests and classes.txt")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
