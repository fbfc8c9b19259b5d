"""Data tools: `foodnet data {check,from-folder,demo} ...` (= python -m foodnet.data ...)."""

from __future__ import annotations

import argparse
import sys
import time

from foodnet.data.check import check_manifest, find_copies, format_problems
from foodnet.data.demo import make_demo_dataset
from foodnet.data.folder import from_folder
from foodnet.data.manifest import read_classes
from foodnet.errors import ConfigError, ManifestError, run_cli
from foodnet.logs import console_logging
from foodnet.machine import num_workers


def _check(args: argparse.Namespace) -> int:
    class_names = None
    if args.classes:
        class_names = read_classes(args.classes)
        if args.num_classes is not None and args.num_classes != len(class_names):
            raise ManifestError(f"{args.classes}: lists {len(class_names)} classes but "
                                f"--num-classes {args.num_classes}; make them agree")
    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num-classes {args.num_classes} must be positive")
    start = time.perf_counter()
    reports = [check_manifest(manifest, args.num_classes, class_names, decode=not args.quick,
                              workers=args.workers) for manifest in args.manifests]
    # Copies are found across all the manifests given (train vs test: a leak).
    find_copies(reports, workers=args.workers)
    for report in reports:
        print(report.summary())
        if report.problems:
            print(format_problems(report.problems, limit=None))
    errors = sum(len(r.errors) for r in reports)
    warnings = sum(len(r.warnings) for r in reports)
    notes = sum(len(r.notes) for r in reports)
    seconds = time.perf_counter() - start
    print(f"{errors} error(s), {warnings} warning(s)" + (f", {notes} note(s)" if notes else "")
          + f" in {len(args.manifests)} manifest(s) ({seconds:.1f}s)")
    return 1 if errors else 0


def _from_folder(args: argparse.Namespace) -> int:
    result = from_folder(args.root, args.out, args.val_fraction, args.test_fraction, args.seed)
    print(f"{len(result.class_names)} classes: {', '.join(result.class_names)}")
    for name, path in result.files.items():
        count = f" ({len(result.rows[name])} images)" if name in result.rows else ""
        print(f"{name}: {path}{count}")
    print(f"skipped {len(result.skipped)} non-image file(s)")
    for path in result.skipped[:10]:
        print(f"  {path}")
    if len(result.skipped) > 10:
        print(f"  ... and {len(result.skipped) - 10} more")
    return 0


def _demo(args: argparse.Namespace) -> int:
    paths = make_demo_dataset(args.out, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="foodnet data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser(
        "check", help="validate manifests and decode every image; exit 1 on any error",
        description="Print a summary and every problem as MANIFEST:LINE: message (path), "
                    "byte-identical files across all the manifests given included (give train, "
                    "val and test together to find leaks). Exit 0 when clean or only warnings, "
                    "1 on any error.")
    check.add_argument("manifests", nargs="+", metavar="MANIFEST")
    check.add_argument("--classes", help="classes.txt: also checks labels < number of classes")
    check.add_argument("--num-classes", type=int, help="labels must be below this")
    check.add_argument("--quick", action="store_true",
                       help="only check that files exist and are non-empty (no decoding)")
    check.add_argument("--workers", type=int, default=num_workers(),
                       help="decoding threads (default: %(default)s)")
    check.set_defaults(run=_check)

    folder = commands.add_parser(
        "from-folder", help="write manifests and classes.txt from ROOT/<class>/<images>",
        description="Stratified, deterministic split of a class-per-folder tree; classes in "
                    "sorted order; files without an image extension are skipped and counted.")
    folder.add_argument("root", metavar="ROOT")
    folder.add_argument("--out", required=True, help="folder for the manifests and classes.txt")
    folder.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of each class for val.txt (default: %(default)s)")
    folder.add_argument("--test-fraction", type=float, default=0.1,
                        help="share of each class for test.txt (default: %(default)s)")
    folder.add_argument("--seed", type=int, default=0,
                        help="the split's random seed (default: %(default)s)")
    folder.set_defaults(run=_from_folder)

    demo = commands.add_parser("demo", help="write the synthetic 20-class demo dataset")
    demo.add_argument("--out", required=True, help="folder for images/, manifests and classes.txt")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    console_logging()
    return run_cli(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
