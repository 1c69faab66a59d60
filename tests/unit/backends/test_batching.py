"""Dynamic batching with a fake backend: merging, splitting, waits, sizes, isolation, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from onnxkit.backends.batching import BatchingBackend
from onnxkit.errors import BackendThrottledError, InferenceError, InvalidInputError
from onnxkit.manifest import FileEntry, Manifest, TensorSpec

POISON = -1.0  # a value that makes the fake model fail, as a bad input would


def manifest(batch_dim: int = -1, width: int = -1) -> Manifest:
    """x FP32 [batch, width] -> y FP32 [batch, width] (y = 2x) and total FP32 [batch]."""
    return Manifest(
        name="fake",
        version="1",
        files=(FileEntry("model.onnx", "0" * 64, 1),),
        inputs=(TensorSpec("x", "FP32", (batch_dim, width)),),
        outputs=(
            TensorSpec("y", "FP32", (batch_dim, width)),
            TensorSpec("total", "FP32", (batch_dim,)),
        ),
        opset=17,
    )


class FakeBackend:
    """Doubles its input; records every call; can block, sleep, fail or reduce the batch."""

    processing = None  # tensors only: no declared processing

    def __init__(self, manifest_: Manifest | None = None) -> None:
        self.manifest = manifest_ or manifest()
        self.calls: list[int] = []  # rows per call
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None  # when set up, calls wait for it
        self.entered = threading.Event()
        self.delay = 0.0
        self.reduce = False  # outputs lose the batch dimension (not batch-major)

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict:
        x = inputs["x"]
        with self.lock:
            self.calls.append(int(x.shape[0]))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if (x == POISON).any():
            raise InferenceError("the model failed on this input")
        if outputs is not None and "nope" in outputs:
            raise InvalidInputError("unknown output 'nope'")
        if self.reduce:
            result = {"y": (x * 2).sum(axis=0), "total": np.float32(x.sum())}
        else:
            result = {"y": x * 2, "total": x.sum(axis=1)}
        return {k: v for k, v in result.items() if outputs is None or k in outputs}


@pytest.fixture
def fake() -> FakeBackend:
    """A fresh fake backend."""
    return FakeBackend()


@pytest.fixture
def make_batcher() -> Iterator[Callable[..., BatchingBackend]]:
    """Builds batchers and closes them after the test."""
    made: list[BatchingBackend] = []

    def make(backend: Any, **kwargs: Any) -> BatchingBackend:
        kwargs.setdefault("max_size", 8)
        kwargs.setdefault("max_wait_ms", 200)
        batcher = BatchingBackend(backend, **kwargs)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(timeout_s=5)


def rows(start: float, count: int, width: int = 3) -> np.ndarray:
    """``count`` distinct rows: row i is filled with start + i."""
    return np.repeat(np.arange(start, start + count, dtype=np.float32)[:, None], width, axis=1)


def concurrently(
    batcher: BatchingBackend, requests: list[dict[str, Any]], outputs: list[Any] | None = None
) -> list[Any]:
    """Send every request at the same moment; return each result or the exception it raised."""
    barrier = threading.Barrier(len(requests))

    def send(index: int) -> Any:
        barrier.wait()
        try:
            return batcher.run(requests[index], None if outputs is None else outputs[index])
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, range(len(requests))))


# --- merging and splitting --------------------------------------------------------------------


def test_concurrent_requests_run_as_one_batch_and_each_gets_its_own_rows(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    # GIVEN requests of 1, 2 and 3 rows with distinct values, sent at the same time
    batcher = make_batcher(fake, max_size=16, max_wait_ms=300)
    requests = [{"x": rows(10, 1)}, {"x": rows(20, 2)}, {"x": rows(30, 3)}]

    # WHEN they run
    results = concurrently(batcher, requests)

    # THEN the backend ran once on 6 rows, and each request got exactly its rows back, in order
    assert fake.calls == [6]
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
        np.testing.assert_array_equal(result["total"], request["x"].sum(axis=1))
        assert list(result) == ["y", "total"]


def test_results_follow_each_requests_outputs(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    batcher = make_batcher(fake, max_wait_ms=100)

    result = batcher.run({"x": rows(1, 2)}, ["total"])

    assert list(result) == ["total"]
    np.testing.assert_array_equal(result["total"], [3.0, 6.0])


def test_a_lone_request_waits_at_most_max_wait(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    batcher = make_batcher(fake, max_wait_ms=150)

    started = time.perf_counter()
    result = batcher.run({"x": rows(1, 1)})
    elapsed = time.perf_counter() - started

    np.testing.assert_array_equal(result["y"], rows(2, 1))
    assert 0.14 <= elapsed < 1.0
    assert fake.calls == [1]


def test_a_full_batch_runs_without_waiting(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    # GIVEN a long wait but a batch limit that two requests fill
    batcher = make_batcher(fake, max_size=4, max_wait_ms=5000)

    # WHEN two 2-row requests arrive together
    started = time.perf_counter()
    results = concurrently(batcher, [{"x": rows(1, 2)}, {"x": rows(5, 2)}])

    # THEN the full batch ran at once
    assert time.perf_counter() - started < 2.0
    assert fake.calls == [4]
    np.testing.assert_array_equal(results[1]["y"], rows(5, 2) * 2)


def test_batches_never_exceed_max_size(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    batcher = make_batcher(fake, max_size=4, max_wait_ms=300)
    requests = [{"x": rows(10 * i, 1)} for i in range(10)]

    results = concurrently(batcher, requests)

    assert sum(fake.calls) == 10
    assert max(fake.calls) <= 4
    assert len(fake.calls) >= 3
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request["x"] * 2)


def test_a_request_that_would_overflow_the_batch_starts_the_next_one(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    batcher = make_batcher(fake, max_size=4, max_wait_ms=300)

    results = concurrently(batcher, [{"x": rows(1, 3)}, {"x": rows(5, 3)}])

    assert sorted(fake.calls) == [3, 3]
    np.testing.assert_array_equal(results[0]["y"], rows(1, 3) * 2)
    np.testing.assert_array_equal(results[1]["y"], rows(5, 3) * 2)


def test_a_request_as_large_as_max_size_runs_directly(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    batcher = make_batcher(fake, max_size=4, max_wait_ms=5000)

    started = time.perf_counter()
    batcher.run({"x": rows(1, 4)})

    assert time.perf_counter() - started < 1.0  # no wait for company it could not take
    assert fake.calls == [4]


def test_mixed_shapes_and_outputs_are_not_merged(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    # GIVEN a model whose second dimension is dynamic too
    batcher = make_batcher(fake, max_size=16, max_wait_ms=300)
    requests = [
        {"x": rows(1, 1, width=3)},
        {"x": rows(2, 1, width=5)},  # another width
        {"x": rows(3, 1, width=3).astype(np.float64)},  # another dtype
        {"x": rows(4, 1, width=3)},  # same as the first, but asks for other outputs
    ]
    outputs = [None, None, None, ["total"]]

    # WHEN they arrive together
    results = concurrently(batcher, requests, outputs)

    # THEN each ran in its own batch and got its own answer
    assert sorted(fake.calls) == [1, 1, 1, 1]
    assert results[1]["y"].shape == (1, 5)
    assert results[2]["y"].dtype == np.float64
    assert list(results[3]) == ["total"]


def test_a_merged_failure_falls_back_to_each_request_alone(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    # GIVEN one request that makes the model fail, among good ones
    batcher = make_batcher(fake, max_size=16, max_wait_ms=300)
    good = [{"x": rows(1, 2)}, {"x": rows(7, 1)}]
    bad = {"x": np.full((1, 3), POISON, dtype=np.float32)}

    # WHEN they arrive together
    results = concurrently(batcher, [good[0], bad, good[1]])

    # THEN the merged run failed, each was retried alone, and only the bad one failed
    assert fake.calls[0] == 4
    assert sorted(fake.calls[1:]) == [1, 1, 2]
    np.testing.assert_array_equal(results[0]["y"], good[0]["x"] * 2)
    np.testing.assert_array_equal(results[2]["y"], good[1]["x"] * 2)
    assert isinstance(results[1], InferenceError)


def test_a_client_error_reaches_only_its_request(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    batcher = make_batcher(fake, max_wait_ms=50)

    with pytest.raises(InvalidInputError):
        batcher.run({"x": rows(1, 1)}, ["nope"])
    assert batcher.run({"x": rows(1, 1)})["y"].shape == (1, 3)


def test_outputs_that_are_not_batch_major_turn_merging_off(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    # GIVEN a model that reduces over the batch (its outputs cannot be split by rows)
    fake.reduce = True
    batcher = make_batcher(fake, max_size=16, max_wait_ms=300)
    requests = [{"x": rows(1, 1)}, {"x": rows(5, 1)}]

    # WHEN two requests are merged
    results = concurrently(batcher, requests)

    # THEN each is answered from a run of its own, and later requests are no longer merged
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], (request["x"] * 2).sum(axis=0))
    assert not batcher.mergeable
    calls = len(fake.calls)
    started = time.perf_counter()
    batcher.run({"x": rows(1, 1)})
    assert time.perf_counter() - started < 0.2
    assert len(fake.calls) == calls + 1


def test_a_model_without_a_dynamic_batch_dimension_is_never_merged(
    make_batcher: Callable[..., BatchingBackend],
) -> None:
    fixed = FakeBackend(manifest(batch_dim=1, width=3))
    batcher = make_batcher(fixed, max_size=16, max_wait_ms=5000)

    started = time.perf_counter()
    results = concurrently(batcher, [{"x": rows(1, 1)}, {"x": rows(2, 1)}])

    assert time.perf_counter() - started < 1.0
    assert fixed.calls == [1, 1]
    np.testing.assert_array_equal(results[1]["y"], rows(4, 1))


def test_inputs_without_a_shared_first_dimension_run_directly(
    make_batcher: Callable[..., BatchingBackend],
) -> None:
    class TwoInputs(FakeBackend):
        def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict:
            return super().run({"x": inputs["x"]}, outputs)

    backend = TwoInputs(
        Manifest(
            name="fake",
            version="1",
            files=(FileEntry("model.onnx", "0" * 64, 1),),
            inputs=(TensorSpec("x", "FP32", (-1, 3)), TensorSpec("z", "FP32", (-1,))),
            outputs=(TensorSpec("y", "FP32", (-1, 3)),),
            opset=17,
        )
    )
    batcher = make_batcher(backend, max_wait_ms=5000)

    started = time.perf_counter()
    batcher.run({"x": rows(1, 2), "z": np.zeros(3, dtype=np.float32)})

    assert time.perf_counter() - started < 1.0


def test_the_observer_hears_each_dispatch(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    seen: list[tuple[int, int]] = []
    batcher = make_batcher(
        fake, max_size=16, max_wait_ms=300, observer=lambda n, r: seen.append((n, r))
    )

    concurrently(batcher, [{"x": rows(1, 1)}, {"x": rows(2, 3)}])

    assert seen == [(2, 4)]


# --- the queue bound and shutdown ------------------------------------------------------------


def test_a_full_queue_refuses_with_429(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    # GIVEN a dispatcher stuck in a slow run and a queue of one
    fake.gate = threading.Event()
    batcher = make_batcher(fake, max_wait_ms=1, max_queue=1)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.run, {"x": rows(1, 1)})
        assert fake.entered.wait(5)
        second = pool.submit(batcher.run, {"x": rows(2, 1)})  # waits in the queue
        deadline = time.monotonic() + 5
        while batcher._queue.qsize() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)

        # WHEN one more arrives
        with pytest.raises(BackendThrottledError) as refused:
            batcher.run({"x": rows(3, 1)})

        # THEN it is refused at once with a Retry-After; the queued ones still complete
        assert refused.value.status == 429
        assert refused.value.headers["Retry-After"] == "1"
        fake.gate.set()
        np.testing.assert_array_equal(first.result(5)["y"], rows(2, 1))
        np.testing.assert_array_equal(second.result(5)["y"], rows(4, 1))


def test_close_runs_what_is_queued_then_runs_directly(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    # GIVEN requests waiting for company under a long max wait
    batcher = make_batcher(fake, max_size=16, max_wait_ms=10_000)
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(batcher.run, {"x": rows(i, 1)}) for i in (1, 2)]
        deadline = time.monotonic() + 5
        while batcher._queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)  # both taken into a group by the dispatcher
        time.sleep(0.05)

        # WHEN the batcher is closed
        started = time.perf_counter()
        batcher.close(timeout_s=5)

        # THEN they ran at once (together), the thread stopped, and later requests run directly
        assert time.perf_counter() - started < 2.0
        assert [f.result(5)["y"][0, 0] for f in waiting] == [2.0, 4.0]
    assert fake.calls == [2]
    assert not batcher._thread.is_alive()
    batcher.run({"x": rows(1, 1)})
    assert fake.calls == [2, 1]
    batcher.close()  # idempotent


def test_one_batch_runs_while_the_next_one_gathers(
    fake: FakeBackend, make_batcher: Callable[..., BatchingBackend]
) -> None:
    # GIVEN a slow model
    fake.delay = 0.3
    batcher = make_batcher(fake, max_size=16, max_wait_ms=50)

    # WHEN six requests arrive at once, then six more while the first batch runs
    with ThreadPoolExecutor(12) as pool:
        first = [pool.submit(batcher.run, {"x": rows(i, 1)}) for i in range(6)]
        assert fake.entered.wait(5)
        second = [pool.submit(batcher.run, {"x": rows(i, 1)}) for i in range(6, 12)]
        results = [f.result(10) for f in first + second]

    # THEN the later ones were merged too, and everyone got their own row
    assert len(fake.calls) <= 4
    for i, result in enumerate(results):
        assert result["y"][0, 0] == 2.0 * i


def test_max_size_must_be_positive(fake: FakeBackend) -> None:
    with pytest.raises(ValueError, match="max_size"):
        BatchingBackend(fake, max_size=0, max_wait_ms=1)
