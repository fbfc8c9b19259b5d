"""Logging set-up for the entry points: foodnet's own lines on the console and in the run's log
file, once (rank zero) under DDP."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class RankZeroFilter(logging.Filter):
    """Pass records only in the process of global rank 0 (Lightning sets the rank it knows)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
        return rank_zero is None or getattr(rank_zero.rank_zero_only, "rank", 0) == 0


class ConsoleHandler(logging.StreamHandler):
    """Info lines to stdout (or stderr), warnings and errors to stderr, whatever sys.stdout and
    sys.stderr are when a record is emitted (tests and notebooks swap them)."""

    def __init__(self, info_stream: str = "stdout", stream=None):  # stream: Hydra's default key
        super().__init__()
        self.info_stream = info_stream

    @property
    def stream(self):
        if self._record_level >= logging.WARNING or self.info_stream == "stderr":
            return sys.stderr
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass

    def emit(self, record: logging.LogRecord) -> None:
        self._record_level = record.levelno
        super().emit(record)

    _record_level = logging.INFO


def console_logging(info_stream: str = "stdout", level: int = logging.INFO) -> None:
    """Plain lines on the console for a command run outside Hydra (predict, export, data, sweep:
    info_stream="stderr" where stdout carries the command's output)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, ConsoleHandler):
            handler.info_stream = info_stream
            break
    else:
        handler = ConsoleHandler(info_stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(RankZeroFilter())
        root.addHandler(handler)
    root.setLevel(level)


# Library loggers whose INFO lines are chatter in a foodnet run: Lightning's "GPU available",
# "💡 Tip", the model summary table, "`Trainer.fit` stopped: ...".
CHATTY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
# Library loggers whose warnings are chatter: torch's C++ extension finder says "No CUDA runtime
# is found, using CUDA_HOME=..." whenever torch.compile runs on a machine without a GPU.
CHATTY_WARNING_LOGGERS = ("torch.utils.cpp_extension",)


@contextmanager
def library_chatter(verbose: bool) -> Iterator[None]:
    """Unless verbose: library INFO lines and deprecation/possible-user warnings are off inside.
    Either way each library line shows once, through foodnet's handlers (console and log file)."""
    # Imported first: importing Lightning sets its loggers to INFO, which would undo the levels
    # set below, and gives the `lightning` logger a console handler of its own.
    import lightning  # noqa: F401

    own = _library_handlers()
    for logger, handler in own:
        logger.removeHandler(handler)
    try:
        if verbose:
            yield
            return
        with _quiet():
            yield
    finally:
        for logger, handler in own:
            logger.addHandler(handler)


def _library_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    """Lightning's own console handlers, which print each of its lines a second time (as
    "INFO: ...") next to foodnet's handlers on the root logger."""
    if not logging.getLogger().handlers:
        return []
    pairs = []
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.propagate:
            pairs += [(logger, handler) for handler in logger.handlers
                      if type(handler) is logging.StreamHandler]
    return pairs


@contextmanager
def _quiet() -> Iterator[None]:
    levels = {name: logging.WARNING for name in CHATTY_LOGGERS}
    levels.update({name: logging.ERROR for name in CHATTY_WARNING_LOGGERS})
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    before = {logger: logger.level for logger in loggers}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # Lightning's hints about worker counts and logging intervals on tiny data.
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*log_every_n_steps.*")
        for logger, level in loggers.items():
            logger.setLevel(level)
        try:
            yield
        finally:
            for logger, level in before.items():
                logger.setLevel(level)
