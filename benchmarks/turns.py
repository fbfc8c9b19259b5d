"""Processes that take turns: one runs, the others wait, in a fixed rotation.

bench.py starts the variants it compares at the same time and lets them alternate, one setup or
one epoch per turn, so that whatever else loads the machine during the benchmark falls on all of
them alike: the ratios are measured side by side, interleaved, not minutes apart.

A shared folder holds `turn` (the name whose turn it is) and `active` (the names still running,
in rotation order), updated under a lock. Waiting is a sleep loop: it costs no CPU worth counting.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

POLL_S = 0.05
_CURRENT: dict[tuple[str, str], Turns] = {}


class Turns:
    @classmethod
    def current(cls, folder: str | Path, name: str) -> Turns:
        """This process's Turns (one per process: bench.py and a callback share it)."""
        key = (str(folder), name)
        if key not in _CURRENT:
            _CURRENT[key] = cls(folder, name)
        return _CURRENT[key]

    def __init__(self, folder: str | Path, name: str):
        self.folder = Path(folder)
        self.name = name
        self.waits: list[tuple[float, float]] = []  # (start, end) wall times of each wait

    def waited(self, since: float, until: float | None = None) -> float:
        """Seconds spent waiting for turns between `since` and `until` (time.time()): a
        process's own time is the rest."""
        until = time.time() if until is None else until
        return sum(max(0.0, min(end, until) - max(start, since)) for start, end in self.waits)

    @staticmethod
    def setup(folder: str | Path, order: list[str]) -> None:
        """Before the processes start: `order` take turns, the first one goes first."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "state.json").write_text(json.dumps({"active": order, "turn": order[0]}))

    @contextmanager
    def _state(self):
        with open(self.folder / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.folder / "state.json"
            state = json.loads(path.read_text())
            yield state
            partial = path.with_name(f".state.{os.getpid()}.tmp")
            partial.write_text(json.dumps(state))
            os.replace(partial, path)

    def wait(self) -> None:
        """Block until it is this process's turn."""
        start = time.time()
        while True:
            with self._state() as state:
                if state["turn"] == self.name:
                    break
            time.sleep(POLL_S)
        self.waits.append((start, time.time()))

    def _pass_on(self, state: dict, leaving: bool) -> None:
        active = state["active"]
        index = active.index(self.name)
        if leaving:
            active.remove(self.name)
            state["turn"] = active[index % len(active)] if active else None
        else:
            state["turn"] = active[(index + 1) % len(active)]

    def next(self) -> None:
        """End this turn: let the next process run, and wait for the turn to come back."""
        with self._state() as state:
            self._pass_on(state, leaving=False)
        self.wait()

    def leave(self) -> None:
        """This process is done: the others go on without it."""
        with self._state() as state:
            if self.name in state["active"]:
                self._pass_on(state, leaving=True)
