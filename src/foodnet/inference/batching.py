"""Dynamic batching: images from concurrent requests share one forward pass.

Request handlers `submit` preprocessed images from any thread (or `await predict` from the event
loop). One worker thread takes the oldest waiting image, gathers more until it has
`max_batch_size` or `max_wait` seconds have passed, runs the model once on the stack and hands
each caller its own row. With `max_batch_size=1` every image runs alone (the baseline that
`make bench-serve` compares against). Written here, not taken from LitServe: docs/serve.md says why.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch

log = logging.getLogger(__name__)

_STOP = object()  # the queue's end marker


class Batcher:
    """Runs `model` (an N x ... batch in, N rows out) on batches gathered from many callers."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], max_batch_size: int,
                 max_wait: float):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be at least 1")
        if max_wait < 0:
            raise ValueError(f"max_wait={max_wait} must not be negative")
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.batch_sizes: Counter[int] = Counter()  # batch size -> how many batches ran
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="foodnet-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the images already submitted, then end the worker thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, images: Sequence[torch.Tensor]) -> list[Future]:
        """One future per image; each resolves to that image's output row."""
        if self._thread is None:
            raise RuntimeError("Batcher.start() was not called")
        futures = []
        for image in images:
            future: Future = Future()
            self._queue.put((image, future))
            futures.append(future)
        return futures

    async def predict(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Await every image's row; cancelling the caller drops its images from the queue."""
        return list(await asyncio.gather(*map(asyncio.wrap_future, self.submit(images))))

    def _next_batch(self) -> tuple[list, bool]:
        """Block for the first item, then gather until full or max_wait; (items, stop seen)."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 \
                    else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._next_batch()
            # A caller that went away (cancelled future) is dropped before the model runs.
            batch = [(image, future) for image, future in batch
                     if future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                outputs = self.model(torch.stack([image for image, _ in batch]))
            except Exception as err:  # a bug, not a client's mistake: each caller gets it
                log.exception("the model failed on a batch of %d", len(batch))
                for _, future in batch:
                    future.set_exception(err)
                continue
            self.batch_sizes[len(batch)] += 1
            for (_, future), row in zip(batch, outputs, strict=True):
                future.set_result(row)
