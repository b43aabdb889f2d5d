"""A worker's job slots, taken when a job starts real work rather than when the call arrives.

A call whose answer is already in the store (same content key) costs a lookup, so a busy worker
answers it at once instead of refusing it with RESOURCE_EXHAUSTED: `run_cached` claims the slot
only before it produces. The pipeline service claims none for orchestrating (several runs
proceed at once; the stages it runs in-process claim theirs when they compute). Outside a served
call (embedded runs) there is no slot and claiming does nothing.
"""

from __future__ import annotations

import contextvars
import threading

from services.common.errors import ResourceExhaustedError


class JobLimiter:
    """At most `limit` jobs doing real work at once on this worker."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def try_acquire(self) -> bool:
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()


class JobSlot:
    """One call's claim on its worker's limiter: taken at most once, released when the call ends."""

    def __init__(self, limiter: JobLimiter, name: str):
        self.limiter = limiter
        self.name = name
        self.claimed = False

    def claim(self) -> None:
        if self.claimed:
            return
        if not self.limiter.try_acquire():
            raise ResourceExhaustedError(
                f"this {self.name} worker already runs {self.limiter.limit} job(s); "
                "retry on another replica"
            )
        self.claimed = True

    def release(self) -> None:
        if self.claimed:
            self.claimed = False
            self.limiter.release()


current_slot: contextvars.ContextVar[JobSlot | None] = contextvars.ContextVar(
    "current_slot", default=None
)


def claim_job_slot() -> None:
    """Take this call's slot before real work; ResourceExhaustedError when the worker is full."""
    slot = current_slot.get()
    if slot is not None:
        slot.claim()
