"""The one error family: a FoodnetError is a user's mistake (bad data, bad config, a missing or
foreign file), printed as one line that names the file and the fix. Any other exception is a bug
in foodnet and keeps its traceback.

Exit codes, the same for every command (docs/errors.md):
    0    done
    1    partial result: some inputs were unreadable, the rest is done (predict)
    2    a user's mistake: bad config, data, file or arguments; nothing was written
    128+N  stopped by signal N after saving what could be saved
           (130 Ctrl-C, 138 SIGUSR1, 143 SIGTERM)
"""

from __future__ import annotations

import argparse
import difflib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128

log = logging.getLogger("foodnet")


class FoodnetError(Exception):
    """A user's mistake; the message says what is wrong and how to fix it.

    Each cause also derives from the builtin it refines (ValueError, OSError, RuntimeError), so
    library callers' `except ValueError` keeps working; the entry points catch FoodnetError only.
    """

    exit_code = EXIT_USAGE


class ConfigError(FoodnetError, ValueError):
    """A config value or command-line option is wrong (type, range, contradiction, unknown key)."""


class ManifestError(FoodnetError, ValueError):
    """A manifest or classes file is malformed; the message names file:line and the fix."""


class ImageLoadError(FoodnetError, OSError):
    """An image file cannot be decoded; the message names the file (and its manifest line)."""

    def __init__(self, reason: str, path: str | Path | None = None, where: str | None = None):
        if path is None:
            message = reason
        elif where is None:
            message = f"{path}: {reason}"
        else:  # the manifest problem format: MANIFEST:LINE: message (path)
            message = f"{where}: {reason} ({path})"
        # One positional arg, so that pickling and DataLoader's worker re-raise rebuild it.
        super().__init__(message)
        self.reason = reason
        self.path = None if path is None else str(path)
        self.where = where


class WeightsError(FoodnetError, RuntimeError):
    """Pretrained weights cannot be resolved, downloaded or loaded; the message says the way out."""


class CheckpointError(FoodnetError, RuntimeError):
    """A checkpoint is missing, unsafe, truncated or not foodnet's; the message names the file."""


class ModelFileError(FoodnetError, RuntimeError):
    """An exported model or its preprocessing sidecar is missing or unreadable; names the file."""


class InputError(FoodnetError, ValueError):
    """An input names no images (an empty folder, an empty or missing list, a missing file)."""


class OutputError(FoodnetError, OSError):
    """An output path cannot be written (a folder, a read-only place)."""


class NonFiniteLossError(FoodnetError, RuntimeError):
    """Training produced a NaN/inf loss or weights; names the step and what to try."""


def user_message(err: BaseException) -> str:
    """The one-line message of a user error, also when a DataLoader worker re-raised it."""
    text = str(err).strip()
    # A worker's exception arrives with its traceback in the message: its last line is the error.
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def find_user_error(err: BaseException) -> FoodnetError | None:
    """err itself or the FoodnetError it wraps (Hydra's instantiate and DataLoader workers wrap)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, FoodnetError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def exit_on_user_error(cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """The handler of every entry point: a FoodnetError becomes `error: ...` and its exit code,
    after `cleanup` (what the command started must not outlive the mistake); anything else
    propagates with its traceback."""
    try:
        yield
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        log.error("error: %s", user_message(user_error))
        if cleanup is not None:
            cleanup()
        raise SystemExit(user_error.exit_code) from None


def run_cli(body: Callable[[], int]) -> int:
    """exit_on_user_error for the argparse commands, whose main returns the exit code (tests and
    `sys.exit(main())` read it): body's code, or after `error: ...` the FoodnetError's."""
    try:
        with exit_on_user_error():
            return body()
    except SystemExit as stop:
        return stop.code


def probability(text: str) -> float:
    """An argparse type: a probability in [0, 1] (--min-confidence)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def did_you_mean(word: str, choices) -> str:
    """"; did you mean X?" with the choice closest to a mistyped word, or "" when none is close.
    A dotted key whose last part is right but misplaced (`model.lr`) finds the key that ends so
    (`model.optimizer.lr`)."""
    choices = list(choices)
    leaf = word.rpartition(".")[2]
    same_leaf = [c for c in choices if c.rpartition(".")[2] == leaf and c != word]
    close = (difflib.get_close_matches(word, same_leaf, n=1, cutoff=0)
             or difflib.get_close_matches(word, choices, n=1, cutoff=0.6))
    return f"; did you mean {close[0]}?" if close else ""


def positive_int(text: str) -> int:
    """An argparse type: the argparse commands' counts (--batch-size, --topk, --threads)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value
