"""One run at a time per key, with triggers that arrive meanwhile folded into a single re-run.

kopf calls sync handlers from a thread pool, so two shards' events can ask for
the same cluster's reconcile at the same moment. Running both would race (two
writers computing the same next routing version); dropping the second would
lose a change made after the first one read the world. Instead the second
caller marks the running one to go round once more and returns at once: every
trigger is honoured by a run that starts after it, and at most one runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    again: bool = False


class Coalescer(Generic[T]):
    """Runs `work` for a key unless it is already running, in which case that run repeats once more."""

    def __init__(self) -> None:
        self._slots: dict[Hashable, _Slot] = {}
        self._lock = threading.Lock()

    def run(self, key: Hashable, work: Callable[[], T]) -> T | None:
        """The result of the last round, or None when the run already under way will cover this trigger."""
        with self._lock:
            slot = self._slots.setdefault(key, _Slot())
        with slot.lock:
            if slot.running:
                slot.again = True
                return None
            slot.running = True
        try:
            while True:
                result = work()
                with slot.lock:
                    if not slot.again:
                        slot.running = False
                        return result
                    slot.again = False
        except BaseException:
            with slot.lock:
                slot.running = slot.again = False
            raise

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._slots.pop(key, None)
