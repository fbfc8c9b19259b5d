"""Compiling the frozen backbone: torch.compile on the run's own batches, kept only where it
measured faster than eager."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from foodnet.speed.measure import synchronize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileMeasurement:
    """What compiling the backbone cost and gained, timed on the run's own batches."""

    compile_s: float
    eager_s: float  # one batch, eager
    compiled_s: float  # a batch of the same shape, compiled
    batch: int

    @property
    def speedup(self) -> float:
        return self.eager_s / self.compiled_s


class CompiledForward:
    """A frozen module's forward through torch.compile (inductor, weights frozen as constants),
    checked against eager on the run's own batches.

    Only calls like the first full batch (`batch_size` images; shape, strides, dtype, grad,
    inference and autocast state) run compiled; others, such as an epoch's smaller last batch,
    run eager rather than compile again. The first call compiles; the second runs compiled and
    the third eager, both timed: when compiling did not make it faster, every later call runs
    eager. A compiler error logs a warning and the run goes on eager. Not an nn.Module, so the
    network's state_dict is unchanged.
    """

    def __init__(self, module: nn.Module, name: str = "backbone",
                 backend: str | Callable = "inductor", batch_size: int | None = None,
                 on_measured: Callable[[CompileMeasurement], None] | None = None):
        self.module = module
        self.name = name
        self.batch_size = batch_size  # None: whatever the first call brings
        self.backend = backend
        self.on_measured = on_measured
        self.state = "new"  # new -> compiled -> timed -> fast | eager
        self.signature: tuple | None = None
        self.compiled: Callable | None = None
        self.measurement: CompileMeasurement | None = None
        self._compile_s = self._compiled_s = 0.0

    @staticmethod
    def _signature(x: torch.Tensor) -> tuple:
        kind = x.device.type
        autocasting = torch.is_autocast_enabled(kind)
        return (tuple(x.shape), x.stride(), x.dtype, x.device, x.is_inference(),
                torch.is_grad_enabled(), torch.is_inference_mode_enabled(), autocasting,
                torch.get_autocast_dtype(kind) if autocasting else None)

    def _timed(self, fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        out = fn(x)
        synchronize(x.device)
        return out, time.perf_counter() - start

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.state == "eager" or (self.signature is not None
                                     and self._signature(x) != self.signature):
            return self.module(x)
        if self.state == "fast":
            return self.compiled(x)
        if self.state == "new":
            if self.batch_size is not None and x.shape[0] != self.batch_size:
                return self.module(x)  # wait for a full batch: the shape most calls have
            return self._compile(x)
        if self.state == "compiled":
            out, self._compiled_s = self._timed(self.compiled, x)
            self.state = "timed"
            return out
        out, eager_s = self._timed(self.module, x)  # "timed": the eager comparison
        self._decide(eager_s, int(x.shape[0]))
        return out

    def _compile(self, x: torch.Tensor) -> torch.Tensor:
        self.signature = self._signature(x)
        log.info("compile: compiling the %s (torch.compile, inductor, frozen weights) ...",
                 self.name)
        try:
            import torch._inductor.config as inductor_config

            # freezing: the weights become constants, so BatchNorm folds into the convolutions.
            with inductor_config.patch(freezing=True):
                self.compiled = torch.compile(self.module, backend=self.backend, dynamic=False)
                out, self._compile_s = self._timed(self.compiled, x)
        except Exception as err:  # whatever the compiler raises, the run goes on eager
            lines = [line for line in str(err).splitlines() if line.strip()]
            log.warning("compile: compiling the %s failed (%s: %s); it runs eager", self.name,
                        type(err).__name__, " ".join(lines[:2])[:300])
            self.state = "eager"
            return self.module(x)
        self.state = "compiled"
        return out

    def _decide(self, eager_s: float, batch: int) -> None:
        self.measurement = CompileMeasurement(
            compile_s=max(self._compile_s - self._compiled_s, 0.0), eager_s=eager_s,
            compiled_s=self._compiled_s, batch=batch)
        faster = self.measurement.speedup > 1.0
        self.state = "fast" if faster else "eager"
        log.info("compile: the %s runs %s: %.2fx eager (%.2f s vs %.2f s per batch of %d) "
                 "after %.0f s of compiling", self.name, "compiled" if faster else "eager",
                 self.measurement.speedup, self._compiled_s, eager_s, batch,
                 self.measurement.compile_s)
        if self.on_measured is not None:
            self.on_measured(self.measurement)
