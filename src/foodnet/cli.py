"""`foodnet COMMAND ...`: one command for every tool. `foodnet train ARGS` runs exactly
`python -m foodnet.train ARGS` (and so for each command); nothing is imported before a command
runs, so `foodnet --help` answers at once."""

from __future__ import annotations

import importlib.util
import runpy
import sys
from importlib.metadata import PackageNotFoundError, version

# name: (module run as `python -m`, one line for --help)
COMMANDS = {
    "train": ("foodnet.train", "train a classifier (Hydra overrides: trainer.max_epochs=20 ...)"),
    "evaluate": ("foodnet.evaluate", "test a checkpoint on a manifest: report.json, confusion.png"),
    "predict": ("foodnet.predict", "classify images, folders or lists with a checkpoint or export"),
    "export": ("foodnet.export", "write a checkpoint as ONNX or .pt2 with its sidecar"),
    "data": ("foodnet.data", "data tools: check, from-folder, demo"),
    "sweep": ("foodnet.sweep", "rewrite the summary of a multirun sweep folder"),
    "serve": ("foodnet.serve", "serve a model over HTTP"),
}


def _version() -> str:
    try:
        return version("foodnet")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: foodnet COMMAND [ARGS...]   (foodnet COMMAND --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help     this list", "  --version      foodnet's version",
              "", "`foodnet train ...` is `python -m foodnet.train ...`; see README.md."]
    return "\n".join(lines)


def children_import_this_foodnet() -> None:
    """Make the processes a command starts as `python -m foodnet...` (DDP's other ranks, the
    submitit launchers' jobs) import this foodnet, also from a folder that holds a `foodnet/`
    folder (the clone itself, named foodnet).

    `python -m` puts the working directory first on sys.path, and a `foodnet/` folder there
    (without __init__.py) is a namespace package that wins over an editable install, whose
    finder Python asks only after every sys.path folder: "No module named foodnet.data...". A
    regular package in any sys.path folder wins over a namespace one, so the folder that holds
    this foodnet goes on PYTHONPATH when it is not on sys.path already (editable installs only:
    a regular install's site-packages is always there).
    """
    import os

    import foodnet

    home = os.path.dirname(os.path.dirname(os.path.abspath(foodnet.__file__)))
    if any(os.path.abspath(entry or os.curdir) == home for entry in sys.path):
        return
    paths = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [home, paths]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"foodnet {_version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"foodnet: unknown command {name!r}; one of: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    children_import_this_foodnet()
    if importlib.util.find_spec(module) is None:
        print(f"foodnet: the {name!r} command is not part of this foodnet {_version()} "
              f"({module} is not installed)", file=sys.stderr)
        return 2
    # Exactly `python -m MODULE REST`: the module runs as __main__ with sys.argv[1:] = REST, so
    # Hydra sees only its overrides and Lightning's DDP relaunches `python -m MODULE REST`.
    sys.argv = [sys.argv[0], *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except BrokenPipeError:
        # The reader went away (`foodnet train --help | head`): stop quietly, as a Unix tool
        # does; stdout goes to devnull so that Python's exit-time flush cannot fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
