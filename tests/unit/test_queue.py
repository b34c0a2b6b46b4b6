"""The explanation queue (review/queue.py): one at a time, first come first served, cancellable while waiting."""

from __future__ import annotations

import threading

import pytest

from dprotonet_core.review.queue import Cancelled, ExplanationQueue
from dprotonet_core.review.settings import configure_torch, usable_cores


def _wait_until(predicate, timeout_s: float = 10.0) -> None:
    done = threading.Event()
    deadline = threading.Timer(timeout_s, done.set)
    deadline.start()
    try:
        while not predicate():
            assert not done.wait(0.005), "timed out"
    finally:
        deadline.cancel()


def test_requests_run_one_at_a_time_in_order_of_arrival():
    queue = ExplanationQueue(poll_s=0.01)
    order, running, most = [], [0], [0]
    release = threading.Event()
    lock = threading.Lock()

    def request(name: str, first: bool = False) -> None:
        with queue.turn():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
                order.append(name)
            if first:
                release.wait(10)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=request, args=("a", True))]
    threads[0].start()
    _wait_until(lambda: order == ["a"])
    for name in "bcd":  # each queued after the previous one took its ticket
        n = len(queue)
        threads.append(threading.Thread(target=request, args=(name,)))
        threads[-1].start()
        _wait_until(lambda n=n: len(queue) == n + 1)
    assert len(queue) == 4
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["a", "b", "c", "d"]
    assert most[0] == 1
    assert len(queue) == 0


def test_a_waiting_request_is_told_how_many_are_ahead_and_can_be_cancelled():
    queue = ExplanationQueue(poll_s=0.01)
    release = threading.Event()
    held = threading.Event()
    seen: list[int] = []
    cancel = threading.Event()
    outcome = {}

    def first() -> None:
        with queue.turn():
            held.set()
            release.wait(10)

    def waiter() -> None:
        try:
            with queue.turn(waiting=seen.append, cancel=cancel.is_set):
                outcome["ran"] = True
        except Cancelled:
            outcome["cancelled"] = True

    a = threading.Thread(target=first)
    a.start()
    held.wait(10)
    b = threading.Thread(target=waiter)
    b.start()
    _wait_until(lambda: len(seen) >= 1)
    assert set(seen) == {1}  # one explanation ahead
    cancel.set()
    b.join(10)
    assert outcome == {"cancelled": True}
    release.set()
    a.join(10)
    with queue.turn() as ticket:  # the cancelled ticket was skipped: the next request runs at once
        assert ticket == 2
    assert len(queue) == 0


def test_a_run_stopped_from_its_waiting_callback_gives_up_its_ticket():
    """Streamlit stops a script run by raising from a progress callback: the queue must not wait for it forever."""
    queue = ExplanationQueue(poll_s=0.01)
    release, held = threading.Event(), threading.Event()

    class Stop(BaseException):
        pass

    def first() -> None:
        with queue.turn():
            held.set()
            release.wait(10)

    def stop(_ahead: int) -> None:
        raise Stop

    a = threading.Thread(target=first)
    a.start()
    held.wait(10)
    with pytest.raises(Stop), queue.turn(waiting=stop):
        pass
    release.set()
    a.join(10)
    assert len(queue) == 0
    with queue.turn() as ticket:
        assert ticket == 2


def test_an_error_inside_the_turn_passes_it_on():
    queue = ExplanationQueue()
    with pytest.raises(RuntimeError), queue.turn():
        raise RuntimeError("boom")
    with queue.turn() as ticket:
        assert ticket == 1


def test_torch_threads_default_to_every_usable_core():
    import torch

    before = torch.get_num_threads()
    try:
        assert configure_torch({}) == usable_cores()
        assert configure_torch({"DPROTONET_TORCH_THREADS": "1"}) == 1 == torch.get_num_threads()
        assert configure_torch({"DPROTONET_TORCH_THREADS": "many"}) == usable_cores()
    finally:
        torch.set_num_threads(before)
