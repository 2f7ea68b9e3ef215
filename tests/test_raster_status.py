"""The deferred status checks of CUDA calls (ops/raster.py), on any machine: the ring's
logic runs against a host-only stand-in for pinned slots, events and streams. The
same paths with a real GPU are in test_raster_cuda.py."""
import threading
import warnings

import pytest
import torch

from dgtalker.ops import raster as raster_ops
from dgtalker.ops._raster_common import RasterInputError


class FakeEvent:
    """A CUDA event stand-in: `done` is set by the test (the 'GPU') or by a wait."""

    def __init__(self, backend):
        self.backend, self.done, self.stream = backend, False, None

    def record(self, stream=None):
        self.done, self.stream = False, stream
        self.backend.recorded.append(self)

    def query(self):
        return self.done

    def synchronize(self):
        if not self.backend.may_wait:
            raise AssertionError("a call waited for the GPU")
        self.backend.waits += 1
        self.done = True


class FakeBackend:
    def __init__(self, may_wait=True):
        self.may_wait = may_wait
        self.recorded = []
        self.blocks = 0
        self.waits = 0

    def host_block(self, n):
        self.blocks += 1
        return torch.zeros(n, 4, dtype=torch.int64)

    def event(self):
        return FakeEvent(self)

    def stream(self, device):
        return ("stream of", device)

    def finish_all(self):
        for e in self.recorded:
            e.done = True


def status(total=10, overflow=0, invalid=0):
    return torch.tensor([total, overflow, invalid, 0], dtype=torch.int64)


DEV0, DEV1 = torch.device("cuda", 0), torch.device("cuda", 1)


def test_many_calls_in_flight_never_wait():
    backend = FakeBackend(may_wait=False)
    book = raster_ops._CapacityBook(backend=backend)
    for i in range(200):  # three times the first block, none finished
        book.defer(DEV0, ("shape", i % 3), status(total=1000 + i, overflow=int(i == 150)))
        assert book.settle(DEV0) == 0  # what a call does first: inspect without waiting
    assert backend.blocks == 4 and len(book.rings[DEV0].pending) == 200
    backend.finish_all()
    with pytest.warns(RuntimeWarning, match="needed 1150 tile intersections"):
        assert book.settle(DEV0) == 1
    assert book.get(("shape", 0)) == raster_ops.grown_capacity(1150)
    assert not book.rings[DEV0].pending and len(book.rings[DEV0].free) == 256  # slots are reused
    for i in range(256):
        book.defer(DEV0, ("shape", 0), status())
    assert backend.blocks == 4


def test_oldest_first_and_stops_at_the_first_unfinished_call():
    backend = FakeBackend(may_wait=False)
    book = raster_ops._CapacityBook(backend=backend)
    for i in range(3):
        book.defer(DEV0, ("s",), status(total=100 * (i + 1), overflow=1))
    backend.recorded[1].done = backend.recorded[2].done = True  # a later call finished first
    assert book.settle(DEV0) == 0
    backend.recorded[0].done = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert book.settle(DEV0) == 3
    assert [str(w.message).split(" tile")[0][-3:] for w in caught] == ["100", "200", "300"]


def test_status_event_goes_on_the_stream_of_the_tensors_device():
    backend = FakeBackend()
    book = raster_ops._CapacityBook(backend=backend)
    book.defer(DEV1, ("s",), status())
    book.defer(DEV0, ("s",), status())
    assert [e.stream for e in backend.recorded] == [("stream of", DEV1), ("stream of", DEV0)]
    assert set(book.rings) == {DEV0, DEV1}


def test_invalid_input_of_an_earlier_call_raises_once():
    backend = FakeBackend()
    book = raster_ops._CapacityBook(backend=backend)
    book.defer(DEV0, ("s",), status(invalid=64))
    backend.finish_all()
    with pytest.raises(RasterInputError, match=r"background \(non-finite\).*earlier CUDA call"):
        book.settle()
    assert book.settle() == 0


def test_a_full_ring_waits_only_beyond_max_slots(monkeypatch):
    monkeypatch.setattr(raster_ops._StatusRing, "MAX_SLOTS", 128)
    backend = FakeBackend(may_wait=True)
    book = raster_ops._CapacityBook(backend=backend)
    for _ in range(128):
        book.defer(DEV0, ("s",), status())
    assert backend.waits == 0
    book.defer(DEV0, ("s",), status())  # the 129th: the oldest is waited for, its slot reused
    assert backend.waits == 1 and len(book.rings[DEV0].host) == 128 and len(book.rings[DEV0].pending) == 128


def test_threads_share_the_book_safely():
    """Threads deferring and settling at once: every call is inspected exactly once."""
    backend = FakeBackend()
    book = raster_ops._CapacityBook(backend=backend)
    seen = []
    lock = threading.Lock()
    errors = []

    def worker(t):
        try:
            n = 0
            for i in range(300):
                book.defer(DEV0 if (t + i) % 2 else DEV1, ("s", t), status(total=i, overflow=1))
                if i % 7 == 0:
                    backend.finish_all()
                n += book.settle()
            n += book.settle(wait=True)
            with lock:
                seen.append(n)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        rest = book.settle(wait=True)
    assert not errors, errors
    assert sum(seen) + rest == 6 * 300
    assert all(not r.pending for r in book.rings.values())


def test_graph_status_collects_checks_and_clears(monkeypatch):
    """GraphStatus's bookkeeping (its kernels run on the GPU in test_raster_cuda.py)."""
    monkeypatch.setattr(raster_ops, "_BOOK", raster_ops._CapacityBook(backend=FakeBackend()))
    gs = raster_ops.GraphStatus(device="cpu", slots=4)
    with gs:
        raster_ops._captured(("a",), status(total=50))
        raster_ops._captured(("b",), status(total=5000, overflow=1))
    assert gs.check() is True and raster_ops._BOOK.get(("b",)) == raster_ops.grown_capacity(5000)
    assert gs.check() is False  # cleared
    with gs:  # a re-capture starts empty
        raster_ops._captured(("a",), status(invalid=2))
    assert gs.keys == [("a",)]
    with pytest.raises(RasterInputError, match="quats.*CUDA-graph replay"):
        gs.check()
    with gs:
        with pytest.raises(RuntimeError, match="more than 4 rasterize calls"):
            for _ in range(5):
                raster_ops._captured(("a",), status())


def test_capture_without_graph_status_warns(monkeypatch):
    monkeypatch.setattr(raster_ops, "_WARNED_UNWATCHED_CAPTURE", False)
    with pytest.warns(RuntimeWarning, match="no dgtalker.ops.raster.GraphStatus open"):
        raster_ops._captured(("a",), status())
