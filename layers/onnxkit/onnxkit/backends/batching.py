"""Server-side dynamic batching: concurrent requests merged along dimension 0, run once, split.

A :class:`BatchingBackend` wraps any :class:`~onnxkit.backends.Backend`. Requests whose
inputs have the same names, dtypes and non-batch shapes (and ask for the same outputs) wait
up to ``max_wait_ms`` for company, are concatenated up to ``max_size`` rows, run once and
split back per request. A GPU does nearly the same work for 32 rows as for one, so under
concurrent load this trades a few milliseconds of waiting for several times the throughput.

One bad request cannot fail the others: when a merged run raises (or its outputs cannot be
split by rows), every request of that batch is run again on its own and gets its own result
or error. Requests that cannot be merged at all (a model without a dynamic first dimension,
inputs whose first dimensions differ, batches as large as ``max_size``) run directly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from onnxkit.backends import Backend
from onnxkit.errors import BackendThrottledError, InferenceError
from onnxkit.manifest import Manifest

logger = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 1024
RETRY_AFTER_SECONDS = "1"

# Called after each run of the dispatcher with (requests, rows): for metrics and tests.
BatchObserver = Callable[[int, int], None]


@dataclass
class _Job:
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    key: Hashable
    rows: int
    enqueued: float
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, np.ndarray] | None = None
    error: Exception | None = None


_STOP = object()


class BatchingBackend:
    """A backend that merges concurrent requests into batches for the backend it wraps.

    Args:
        backend: The backend that runs the merged batches (thread-safe, as onnxruntime is).
        max_size: Most rows in a merged batch (at least 2 to be useful).
        max_wait_ms: Longest a request waits for others to join its batch.
        max_queue: Requests that may wait at once; more are refused with 429.
        observer: Told ``(requests, rows)`` after each dispatch.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_size: int,
        max_wait_ms: float,
        max_queue: int = DEFAULT_MAX_QUEUE,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._backend = backend
        self.manifest: Manifest = backend.manifest
        self.processing = backend.processing
        self._max_size = max_size
        self._max_wait = max_wait_ms / 1000
        self._observer = observer
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._closed = False
        # Merging needs every input to be batch-major; outputs are checked after each run.
        self._mergeable = bool(backend.manifest.inputs) and all(
            spec.shape and spec.shape[0] == -1 for spec in backend.manifest.inputs
        )
        self._thread = threading.Thread(target=self._loop, name="onnxkit-batcher", daemon=True)
        self._thread.start()

    @property
    def mergeable(self) -> bool:
        """Whether requests can still be merged (False for models that are not batch-major)."""
        return self._mergeable

    def run(
        self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run, merged with concurrent requests when possible; see :class:`Backend`.

        Raises:
            BackendThrottledError: Too many requests are already waiting.
            OnnxkitError: Whatever the wrapped backend raises for this request alone.
        """
        rows = _rows(inputs)
        if not self._mergeable or rows is None or rows >= self._max_size:
            return self._backend.run(inputs, outputs)
        job = _Job(inputs, outputs, _key(inputs, outputs), rows, time.monotonic())
        with self._lock:
            if self._closed:
                return_direct = True
            else:
                return_direct = False
                try:
                    self._queue.put_nowait(job)
                except queue.Full:
                    raise BackendThrottledError(
                        "too many requests are waiting to be batched; retry shortly",
                        headers={"Retry-After": RETRY_AFTER_SECONDS},
                    ) from None
        if return_direct:
            return self._backend.run(inputs, outputs)
        while not job.done.wait(1.0):
            if not self._thread.is_alive():  # never expected: the loop catches everything
                raise InferenceError("the batching thread stopped; see the logs")
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def close(self, timeout_s: float | None = None) -> None:
        """Run what is queued, then stop the batching thread; later requests run directly."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)  # after every job queued under the lock: FIFO runs them first
        self._thread.join(timeout_s)

    # -- the dispatcher thread -------------------------------------------------------------

    def _loop(self) -> None:
        groups: dict[Hashable, list[_Job]] = {}
        stopping = False
        while True:
            if not groups:
                if stopping:
                    return
                item = self._queue.get()
            else:
                # The group whose first request has waited longest goes next, but whatever is
                # already queued joins first: after a long run the queue holds its company.
                key = min(groups, key=lambda k: groups[k][0].enqueued)
                deadline = groups[key][0].enqueued + self._max_wait
                wait = 0.0 if stopping else deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    self._dispatch(groups.pop(key))
                    continue
            if item is _STOP:
                stopping = True
                continue
            assert isinstance(item, _Job)
            self._add(groups, item)

    def _add(self, groups: dict[Hashable, list[_Job]], job: _Job) -> None:
        """Put a job in its group; run the group first if the job would overflow it."""
        group = groups.get(job.key)
        if group is not None and sum(j.rows for j in group) + job.rows > self._max_size:
            self._dispatch(groups.pop(job.key))
            group = None
        if group is None:
            group = groups[job.key] = []
        group.append(job)
        if sum(j.rows for j in group) >= self._max_size:
            self._dispatch(groups.pop(job.key))

    def _dispatch(self, jobs: list[_Job]) -> None:
        try:
            if len(jobs) == 1 or not self._mergeable:
                for job in jobs:
                    self._run_alone(job)
            else:
                self._run_merged(jobs)
            if self._observer is not None:
                self._observer(len(jobs), sum(j.rows for j in jobs))
        except Exception as exc:  # keep the thread alive whatever happens; fail only these jobs
            logger.exception("batch dispatch failed")
            for job in jobs:
                if not job.done.is_set() and job.result is None and job.error is None:
                    job.error = InferenceError("the batch could not be run; see the logs")
                    job.error.__cause__ = exc
        finally:
            for job in jobs:
                job.done.set()

    def _run_alone(self, job: _Job) -> None:
        try:
            job.result = self._backend.run(job.inputs, job.outputs)
        except Exception as exc:
            job.error = exc

    def _run_merged(self, jobs: list[_Job]) -> None:
        total = sum(j.rows for j in jobs)
        try:
            merged = {
                name: np.concatenate([j.inputs[name] for j in jobs]) for name in jobs[0].inputs
            }
            results = self._backend.run(merged, jobs[0].outputs)
        except Exception as exc:
            logger.warning(
                "a merged batch of %d requests failed (%s); running each alone",
                len(jobs),
                type(exc).__name__,
            )
            for job in jobs:
                self._run_alone(job)
            return
        if any(a.ndim == 0 or a.shape[0] != total for a in results.values()):
            self._mergeable = False
            logger.warning(
                "the model's outputs are not batch-major (first dimension != %d rows): "
                "dynamic batching is off for this model",
                total,
            )
            for job in jobs:
                self._run_alone(job)
            return
        start = 0
        for job in jobs:
            end = start + job.rows
            job.result = {name: array[start:end] for name, array in results.items()}
            start = end


def _rows(inputs: dict[str, np.ndarray]) -> int | None:
    """The shared first dimension of every input, or None when there is none to merge on."""
    firsts = {a.shape[0] if a.ndim else None for a in inputs.values()}
    if len(firsts) != 1:
        return None
    (rows,) = firsts
    return rows if rows else None


def _key(inputs: dict[str, np.ndarray], outputs: list[str] | None) -> Hashable:
    """Requests with equal keys can be concatenated along dimension 0."""
    shapes = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items()))
    return shapes, None if outputs is None else tuple(outputs)
