"""Dynamic batching: images from concurrent requests go through the model as one batch.

A model thread takes whatever is queued (up to ``max_batch`` images) and runs it as one call,
so a busy server batches by itself: requests that arrive while the model runs wait for the
next call and share it. The knobs follow Triton's dynamic batcher and TF Serving's batching:

- ``workers`` (Triton's model instances, TF ``num_batch_threads``): model threads, each
  running its own batch; an idle one takes a request at once;
- ``infer_alone``: what runs a call that has the server to itself (no other request
  decoding, queued or in the model), e.g. the same model on every core: with several
  workers of one thread each, a busy server runs calls side by side without the threads'
  hand-offs, and the lone client still gets all the cores;
- ``max_batch`` (Triton ``max_batch_size``, TF ``max_batch_size``): images per model call;
- ``max_delay`` (Triton ``max_queue_delay_microseconds``, TF ``batch_timeout_micros``): how
  long a batch smaller than ``max_batch`` may wait for more images. Unlike both, the wait is
  spent only while other requests are *on their way* (reserved: their image is being decoded),
  never for a lone request: with one client the model is called at once;
- ``capacity`` (Triton ``max_queue_size``, TF ``max_enqueued_batches`` x ``max_batch_size``):
  images reserved, queued or in the model at once. One more is refused at once (`BatcherFull`,
  answered 503 with Retry-After), as both fail fast rather than queue without bound;
- a request that gives up (its time limit, a disconnect) calls `Slot.cancel`: a queued image is
  dropped from the queue and its place freed at once (Triton's ``timeout_action: REJECT``); one
  already in the model frees its place when that call returns. No path leaves a place taken.

A slot is reserved *before* decoding so that the model thread knows what is coming; decoding
stays in the caller's worker pool, off the event loop and off the model thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np


class BatcherFull(Exception):
    """Every place in the batcher is taken: answer 503 with Retry-After."""


class BatcherClosed(Exception):
    """The server is shutting down: nothing more is run."""


class Slot:
    """One request's place in the batcher: `submit` its images (n, h, w, c), or `cancel`."""

    __slots__ = ("_batcher", "rows", "images", "future", "state")

    def __init__(self, batcher: Batcher, rows: int):
        self._batcher = batcher
        self.rows = rows
        self.images: np.ndarray | None = None
        self.future: Future = Future()
        self.state = "reserved"  # -> queued -> running -> done; or -> cancelled

    def submit(self, images: np.ndarray) -> Future:
        """Queue the decoded images; the future gives one result per image, in order."""
        self._batcher._submit(self, images)
        return self.future

    def run(self, images: np.ndarray) -> Future:
        """Like `submit`, but when a model worker is idle and nothing is queued, run the model
        here, in the calling thread: a lone request skips the hand-over to a model thread and
        back (the future is done on return). Otherwise queued, to be batched."""
        if not self._batcher._run_inline(self, images):
            self._batcher._submit(self, images)
        return self.future

    def cancel(self) -> None:
        """Give the place back: at once unless the model is running this slot's batch."""
        self._batcher._cancel(self)


class Batcher:
    """Runs ``infer(images) -> results`` (one result per image) on batches built from slots."""

    def __init__(self, infer: Callable[[np.ndarray], Sequence[Any]], *, max_batch: int = 32,
                 max_delay: float = 0.002, capacity: int = 128, workers: int = 1,
                 infer_alone: Callable[[np.ndarray], Sequence[Any]] | None = None,
                 name: str = "fashionnet-model"):
        if max_batch < 1 or capacity < 1 or max_delay < 0 or workers < 1:
            raise ValueError("max_batch, capacity and workers must be >= 1, max_delay >= 0")
        self.infer = infer
        self.infer_alone = infer_alone  # None: ``infer``
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.capacity = max(capacity, max_batch)
        self.taken = 0       # images reserved + queued + running
        self.reserved = 0    # images reserved but not yet submitted (being decoded)
        self.workers = workers
        self.running = 0     # model calls in progress (at most ``workers``)
        self.batches = 0     # model calls so far
        self.images_run = 0  # images through the model so far
        self.alone = 0       # model calls that had the server to themselves
        self._queue: deque[Slot] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # -- the request side -------------------------------------------------------------------

    def reserve(self, rows: int = 1) -> Slot:
        """A place for ``rows`` images, or BatcherFull / BatcherClosed at once."""
        with self._cond:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            # A request bigger than the whole capacity still runs, alone, when nothing else is.
            if self.taken and self.taken + rows > self.capacity:
                raise BatcherFull(f"{self.taken} images queued for the model")
            self.taken += rows
            self.reserved += rows
            return Slot(self, rows)

    def _submit(self, slot: Slot, images: np.ndarray) -> None:
        with self._cond:
            if slot.state == "cancelled":  # gave up meanwhile: its future is cancelled
                return
            if slot.state != "reserved":
                raise RuntimeError(f"slot already {slot.state}")
            if self._closed:
                self._free(slot, "cancelled")
                raise BatcherClosed("the server is shutting down")
            if len(images) != slot.rows:  # fewer decoded than reserved: give the rest back
                self.taken -= slot.rows - len(images)
                self.reserved -= slot.rows - len(images)
                slot.rows = len(images)
            slot.images = images
            slot.state = "queued"
            self.reserved -= slot.rows
            self._queue.append(slot)
            self._cond.notify_all()

    def _cancel(self, slot: Slot) -> None:
        with self._cond:
            if slot.state == "reserved":
                self.reserved -= slot.rows
                self._free(slot, "cancelled")
            elif slot.state == "queued":
                self._queue.remove(slot)
                self._free(slot, "cancelled")
            # running: freed by the model thread when the call returns; done: nothing to do
            self._cond.notify_all()
        if not slot.future.done():
            slot.future.cancel()

    def _free(self, slot: Slot, state: str) -> None:
        """With the lock held: the slot's places are free again."""
        self.taken -= slot.rows
        slot.state = state
        slot.images = None

    # -- the model thread -------------------------------------------------------------------

    def _run_inline(self, slot: Slot, images: np.ndarray) -> bool:
        """Run ``slot`` in this thread if a model worker is free and nothing waits; else
        False (the caller queues it)."""
        with self._cond:
            if slot.state == "cancelled":
                return True  # gave up meanwhile: nothing to run, its future is cancelled
            if self._closed or self._queue or self.running >= self.workers:
                return False
            if slot.state != "reserved":
                raise RuntimeError(f"slot already {slot.state}")
            alone = self.taken == slot.rows  # nothing else reserved, queued or running
            self.running += 1
            self.reserved -= slot.rows
            if len(images) != slot.rows:
                self.taken -= slot.rows - len(images)
                slot.rows = len(images)
            slot.images = images
            slot.state = "running"
        self._run([slot], alone)
        return True

    def _take(self) -> tuple[list[Slot], bool] | None:
        """With the lock held: wait for work and a free worker, then the next batch and
        whether it runs alone (None once closed)."""
        while not self._queue or self.running >= self.workers:
            if self._closed and not self._queue:
                return None
            self._cond.wait()
        self.running += 1
        batch: list[Slot] = []
        rows = 0
        deadline = None
        while True:
            while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch):
                slot = self._queue.popleft()
                slot.state = "running"  # out of the queue: a cancel now waits for the call
                batch.append(slot)
                rows += slot.rows
            # Wait only for images already on their way, and only up to max_delay.
            if (rows >= self.max_batch or not self.reserved or self.max_delay <= 0
                    or self._closed or self._queue):
                break
            now = time.monotonic()
            deadline = deadline or now + self.max_delay
            if now >= deadline:
                break
            self._cond.wait(deadline - now)
        return batch, self.taken == rows  # nothing else reserved, queued or running

    def _loop(self) -> None:
        while True:
            with self._cond:
                taken = self._take()
            if taken is None:
                return
            self._run(*taken)

    def _run(self, batch: list[Slot], alone: bool = False) -> None:
        """One model call for ``batch`` (its slots running, one worker counted); ``alone``:
        no other request was in the batcher when it started (`infer_alone` runs it)."""
        images = batch[0].images if len(batch) == 1 else np.concatenate(
            [s.images for s in batch])
        try:
            infer = self.infer_alone if alone and self.infer_alone else self.infer
            results = list(infer(images))
            if len(results) != len(images):
                raise RuntimeError(f"the model answered {len(results)} results for "
                                   f"{len(images)} images")
            error = None
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            error = exc
        with self._cond:
            self.running -= 1
            self.batches += 1
            self.alone += alone
            self.images_run += len(images)
            for slot in batch:
                self._free(slot, "done")
            self._cond.notify_all()
        start = 0
        for slot in batch:
            if not slot.future.done():
                try:
                    if error is not None:
                        slot.future.set_exception(error)
                    else:
                        slot.future.set_result(results[start:start + slot.rows])
                except Exception:  # noqa: BLE001 - cancelled meanwhile
                    pass
            start += slot.rows

    def close(self, wait: float = 0.0) -> None:
        """Refuse new work; queued requests fail with BatcherClosed; the running call ends."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            for slot in dropped:
                self._free(slot, "cancelled")
            self._cond.notify_all()
        for slot in dropped:
            if not slot.future.done():
                slot.future.set_exception(BatcherClosed("the server is shutting down"))
        if wait:
            deadline = time.monotonic() + wait
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict:
        with self._cond:
            return {"workers": len(self._threads), "max_batch": self.max_batch,
                    "max_delay_ms": 1000 * self.max_delay,
                    "capacity": self.capacity, "taken": self.taken, "queued":
                    sum(s.rows for s in self._queue), "batches": self.batches,
                    "alone": self.alone,
                    "images": self.images_run,
                    "mean_batch": round(self.images_run / self.batches, 2) if self.batches
                    else 0.0}
