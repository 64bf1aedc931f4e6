"""Dynamic batching: each request gets its own answer, the queue is bounded, and no path
(a timeout, a cancel, a failed model call) leaves a place taken."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from fashionnet.server.batching import Batcher, BatcherClosed, BatcherFull


def _echo(calls: list, gate: threading.Event | None = None):
    """A fake model: answers each image's mean pixel value; records the batch sizes."""
    def infer(images: np.ndarray) -> list[float]:
        if gate is not None:
            gate.wait(5)
        calls.append(len(images))
        return [float(x.mean()) for x in images]
    return infer


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer():
    calls: list[int] = []
    gate = threading.Event()
    batcher = Batcher(_echo(calls, gate), max_batch=8, max_delay=0.0, capacity=64)
    try:
        first = batcher.reserve().submit(np.zeros((1, 2, 2, 3), np.uint8))
        time.sleep(0.05)  # the model thread holds the first image (blocked on the gate)
        values = np.random.default_rng(0).permutation(np.arange(1, 13))  # shuffled, distinct
        futures = [batcher.reserve().submit(np.full((1, 2, 2, 3), v, np.uint8)) for v in values]
        gate.set()
        assert first.result(5) == [0.0]
        assert [f.result(5) for f in futures] == [[float(v)] for v in values]
        assert calls == [1, 8, 4]  # the twelve that waited went through in two model calls
        assert batcher.taken == 0 and batcher.stats()["batches"] == 3
    finally:
        batcher.close(wait=1)


def test_a_request_of_several_images_gets_its_rows_in_order():
    calls: list[int] = []
    batcher = Batcher(_echo(calls), max_batch=4)
    try:
        images = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (5, 9, 7)])
        assert batcher.reserve(3).submit(images).result(5) == [5.0, 9.0, 7.0]
        assert batcher.taken == 0
    finally:
        batcher.close(wait=1)


def test_the_queue_bound_refuses_at_once_and_frees_places():
    gate = threading.Event()
    batcher = Batcher(_echo([], gate), max_batch=2, capacity=4)
    try:
        slots = [batcher.reserve() for _ in range(4)]
        with pytest.raises(BatcherFull):
            batcher.reserve()
        slots[0].cancel()
        slots.append(batcher.reserve())  # the cancelled place is free again
        for s in slots[1:]:
            s.cancel()
        assert batcher.taken == 0
    finally:
        gate.set()
        batcher.close(wait=1)


def test_a_cancelled_queued_request_frees_its_place_and_never_runs():
    calls: list[int] = []
    gate = threading.Event()
    batcher = Batcher(_echo(calls, gate), max_batch=1, capacity=4)
    try:
        running = batcher.reserve()
        running.submit(np.ones((1, 2, 2, 3), np.uint8))
        time.sleep(0.05)
        queued = batcher.reserve()
        future = queued.submit(np.full((1, 2, 2, 3), 3, np.uint8))
        assert batcher.taken == 2
        queued.cancel()  # a timeout while it waits for the model
        assert future.cancelled() and batcher.taken == 1
        running.cancel()  # in the model: its place comes back when the call returns
        assert batcher.taken == 1
        gate.set()
        deadline = time.monotonic() + 5
        while batcher.taken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.taken == 0 and calls == [1]
    finally:
        gate.set()
        batcher.close(wait=1)


def test_a_lone_request_does_not_wait_for_the_batch_delay():
    batcher = Batcher(_echo([]), max_batch=32, max_delay=1.0)  # a whole second, if it waited
    try:
        started = time.perf_counter()
        for _ in range(3):
            batcher.reserve().submit(np.ones((1, 2, 2, 3), np.uint8)).result(5)
        assert time.perf_counter() - started < 0.9
    finally:
        batcher.close(wait=1)


def test_the_delay_waits_for_a_request_being_decoded_but_not_longer():
    calls: list[int] = []
    batcher = Batcher(_echo(calls), max_batch=8, max_delay=0.5)
    try:
        decoding = batcher.reserve()  # its image is being decoded
        ready = batcher.reserve().submit(np.ones((1, 2, 2, 3), np.uint8))
        time.sleep(0.05)
        late = decoding.submit(np.full((1, 2, 2, 3), 2, np.uint8))
        assert ready.result(5) == [1.0] and late.result(5) == [2.0]
        assert calls == [2]  # it waited for the second image and ran both at once
        stalled = batcher.reserve()  # never submitted: the wait ends after max_delay
        started = time.perf_counter()
        assert batcher.reserve().submit(np.ones((1, 2, 2, 3), np.uint8)).result(5) == [1.0]
        assert time.perf_counter() - started < 2
        stalled.cancel()
        assert batcher.taken == 0
    finally:
        batcher.close(wait=1)


def test_run_uses_the_calling_thread_when_the_model_is_idle_and_queues_when_busy():
    threads: list[str] = []
    gate = threading.Event()

    def infer(images):
        threads.append(threading.current_thread().name)
        if images[0, 0, 0, 0] == 1:
            gate.wait(5)
        return [float(x.mean()) for x in images]

    batcher = Batcher(infer, max_batch=8, workers=1)
    try:
        lone = batcher.reserve().run(np.full((1, 2, 2, 3), 2, np.uint8))
        assert lone.done() and lone.result() == [2.0]
        assert threads == [threading.current_thread().name]  # no hand-over to a model thread
        holder = threading.Thread(target=lambda: batcher.reserve().run(
            np.ones((1, 2, 2, 3), np.uint8)))
        holder.start()  # runs inline in its own thread and holds the one model worker
        time.sleep(0.05)
        queued = batcher.reserve().run(np.full((1, 2, 2, 3), 3, np.uint8))
        assert not queued.done() and batcher.running == 1  # waits: one model call at a time
        gate.set()
        holder.join(5)
        assert queued.result(5) == [3.0] and threads[-1].startswith("fashionnet-model")
        assert batcher.taken == 0 and batcher.running == 0
    finally:
        gate.set()
        batcher.close(wait=1)


def test_a_call_with_the_model_to_itself_goes_to_infer_alone_and_side_by_side_calls_do_not():
    """Two workers: a lone request runs on ``infer_alone`` (every core); while one call runs,
    or another request is being decoded, a call runs on ``infer`` (one thread each); each
    gets its own answer."""
    used: list[tuple[str, float]] = []
    gate = threading.Event()

    def model(kind):
        def infer(images):
            used.append((kind, float(images.mean())))
            if images[0, 0, 0, 0] == 1:
                gate.wait(5)
            return [float(x.mean()) for x in images]
        return infer

    batcher = Batcher(model("shared"), infer_alone=model("alone"), max_batch=8, workers=2)
    try:
        assert batcher.reserve().run(np.full((1, 2, 2, 3), 2, np.uint8)).result(5) == [2.0]
        holder = batcher.reserve().submit(np.ones((1, 2, 2, 3), np.uint8))  # alone, held
        time.sleep(0.05)
        beside = batcher.reserve().run(np.full((1, 2, 2, 3), 3, np.uint8))
        assert beside.result(5) == [3.0]  # ran inline beside the held call
        gate.set()
        assert holder.result(5) == [1.0]
        decoding = batcher.reserve()  # another request on its way: not alone any more
        assert batcher.reserve().run(np.full((1, 2, 2, 3), 4, np.uint8)).result(5) == [4.0]
        decoding.cancel()
        assert used == [("alone", 2.0), ("alone", 1.0), ("shared", 3.0), ("shared", 4.0)]
        assert batcher.stats()["alone"] == 2 and batcher.taken == 0
    finally:
        gate.set()
        batcher.close(wait=1)


def test_a_failing_model_fails_its_batch_and_frees_every_place():
    def broken(images):
        raise RuntimeError("boom")

    batcher = Batcher(broken, max_batch=4)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.reserve().submit(np.ones((1, 2, 2, 3), np.uint8)).result(5)
        assert batcher.taken == 0
    finally:
        batcher.close(wait=1)


def test_close_refuses_new_work():
    batcher = Batcher(_echo([]), max_batch=4)
    batcher.close(wait=1)
    with pytest.raises(BatcherClosed):
        batcher.reserve()


# --- through the app -----------------------------------------------------------------------

fastapi = pytest.importorskip("fastapi")


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shipped():
    pytest.importorskip("onnxruntime")
    from fashionnet import load
    from fashionnet.default_model import default_model_path

    return load(default_model_path())


def test_concurrent_http_requests_through_the_batcher_get_their_own_answers(shipped):
    import httpx

    from fashionnet.server.app import create_app

    app = create_app(shipped, access_log_enabled=False, model_batch=8, model_workers=1,
                     lone_threads=1)  # one model thread, one session: requests share calls
    rng = np.random.default_rng(1)
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(24)]
    images = [_jpeg(c) for c in colours]
    expected = [p.to_dict()["heads"] for p in
                shipped.predict_arrays(np.stack([shipped.decode(b) for b in images]))]
    order = rng.permutation(len(images))

    real = app.state.batcher.infer
    sizes: list[int] = []

    def slow_infer(batch):  # a slower model, so that requests pile up and share calls
        sizes.append(len(batch))
        time.sleep(0.02)
        return real(batch)

    app.state.batcher.infer = slow_infer

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(*(client.post(
                "/v1/predict", files={"file": (f"{i}.jpg", images[i], "image/jpeg")})
                for i in order))

    responses = asyncio.run(scenario())
    for i, r in zip(order, responses):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["source"] == f"{i}.jpg"
        for head, answer in body["heads"].items():
            assert answer["label"] == expected[i][head]["label"]
            assert answer["probabilities"] == pytest.approx(expected[i][head]["probabilities"],
                                                            abs=1e-4)
    assert max(sizes) > 1 and sum(sizes) == len(images)  # batched, each image once
    assert app.state.batcher.taken == 0


def test_a_full_batcher_answers_503_with_retry_after(shipped):
    from fastapi.testclient import TestClient

    from fashionnet.server.app import create_app

    app = create_app(shipped, access_log_enabled=False, model_batch=2, batch_queue=2)
    client = TestClient(app)
    held = [app.state.batcher.reserve(), app.state.batcher.reserve()]
    r = client.post("/v1/predict", content=_jpeg((200, 0, 0)),
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "busy" in r.json()["error"] and "queue" in r.json()["error"]
    for slot in held:
        slot.cancel()
    r = client.post("/v1/predict", content=_jpeg((200, 0, 0)),
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 200


def test_a_timeout_while_batched_does_not_leave_a_slot_taken(shipped):
    from fastapi.testclient import TestClient

    from fashionnet.server.app import create_app

    app = create_app(shipped, access_log_enabled=False, request_timeout=0.3,
                     model_workers=1, lone_threads=1)  # the one model thread hangs
    batcher = app.state.batcher
    gate = threading.Event()
    real = batcher.infer
    batcher.infer = lambda batch: gate.wait(5) and real(batch)  # the model hangs
    client = TestClient(app, raise_server_exceptions=False)
    blocker = batcher.reserve()
    blocker.submit(np.stack([shipped.decode(_jpeg((0, 0, 0)))]))  # holds the model thread
    time.sleep(0.05)
    r = client.post("/v1/predict", content=_jpeg((0, 0, 200)),
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 503 and "longer than the limit of 0.3 s" in r.json()["error"]
    assert "retry-after" in r.headers
    assert batcher.taken == 1  # only the request the model is running; the timed-out one left
    gate.set()
    deadline = time.monotonic() + 5
    while batcher.taken and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.taken == 0 and app.state.pool.pending == 0
    r = client.post("/v1/predict", content=_jpeg((0, 0, 200)),
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 200


def test_one_thread_model_workers_get_a_second_session_with_every_core_for_lone_calls():
    """--model-workers 2 --model-threads 1: side-by-side calls run on one-thread sessions, a
    lone call on a second session with --lone-threads threads that spin within a call; both
    answer the same; --lone-threads 1: no second session."""
    pytest.importorskip("onnxruntime")
    from starlette.testclient import TestClient

    from fashionnet.default_model import default_model_path
    from fashionnet.server.app import create_app

    app = create_app(default_model_path(), access_log_enabled=False, model_workers=2,
                     model_threads=1, lone_threads=2)
    batcher = app.state.batcher
    assert app.state.predictor.runner.threads == 1
    lone = batcher.infer_alone.__self__
    assert lone is not app.state.predictor and lone.runner.threads == 2 and lone.runner.spin
    image = app.state.predictor.decode(_jpeg((200, 30, 40)))[None]
    shared, alone = batcher.infer(image)[0].to_dict(), batcher.infer_alone(image)[0].to_dict()
    for head, answer in shared["heads"].items():
        assert alone["heads"][head]["label"] == answer["label"]
        assert alone["heads"][head]["probabilities"] == pytest.approx(
            answer["probabilities"], abs=1e-5)
    with TestClient(app) as client:
        r = client.post("/v1/predict", files={"file": ("a.jpg", _jpeg((200, 30, 40)))})
        assert r.status_code == 200, r.text
        assert client.get("/v1/stats").json()["batcher"]["alone"] >= 1
    # --lone-threads 1: no second session
    same = create_app(default_model_path(), access_log_enabled=False, model_workers=2,
                      model_threads=1, lone_threads=1)
    assert same.state.batcher.infer_alone is None
