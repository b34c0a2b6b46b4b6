"""The explanation queue (review/queue.py): one at a time, first come first served, cancellable while waiting."""

from __future__ import annotations

import threading

import pytest

from dprotonet_core.review.queue import Cancelled, ExplanationQueue, QueueFull
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


def _hold(queue: ExplanationQueue, **turn):
    """A thread that takes a turn (or waits for one) and keeps it until the returned event is set."""
    release, entered = threading.Event(), threading.Event()
    outcome: dict = {}

    def run() -> None:
        try:
            with queue.turn(**turn):
                entered.set()
                outcome["ran"] = True
                release.wait(10)
        except Cancelled as exc:
            outcome["cancelled"] = str(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, release, entered, outcome


def test_a_full_queue_refuses_at_once_and_takes_requests_again_later():
    queue = ExplanationQueue(poll_s=0.01, max_waiting=2)
    running, release_a, entered, _ = _hold(queue)
    entered.wait(10)
    waiters = [_hold(queue) for _ in range(2)]
    _wait_until(lambda: queue.waiting() == 2)
    with pytest.raises(QueueFull, match="2 explanations are already waiting"), queue.turn():
        pass
    assert queue.waiting() == 2 and len(queue) == 3  # the refused request took no place
    release_a.set()
    for _, release, _, _ in waiters:
        release.set()
    for thread in [running, *(w[0] for w in waiters)]:
        thread.join(10)
    with queue.turn():  # empty again: taken at once
        pass


def test_a_session_holds_one_waiting_request_a_newer_one_replaces_it():
    queue = ExplanationQueue(poll_s=0.01, max_waiting=1)
    running, release_a, entered, _ = _hold(queue, owner="other")
    entered.wait(10)
    older, release_old, _, old_outcome = _hold(queue, owner="me")
    _wait_until(lambda: queue.waiting() == 1)
    newer, release_new, entered_new, new_outcome = _hold(queue, owner="me")  # the queue is full, but it is mine
    older.join(10)
    assert old_outcome == {"cancelled": "replaced by a newer request of the same session"}
    assert queue.waiting() == 1
    release_a.set()
    entered_new.wait(10)
    assert new_outcome == {"ran": True}
    release_new.set()
    for thread in (running, newer):
        thread.join(10)
    assert len(queue) == 0


def test_demo_mode_drops_the_long_profiles_and_caps_the_time():
    from dprotonet_core.review import settings

    assert settings.offered_profiles({}) == list(settings.MDM_PROFILES)
    demo = settings.offered_profiles({"DPROTONET_DEMO": "1"})
    assert "paper" not in demo and "printed" not in demo and "standard" in demo and "thorough" in demo
    assert settings.mdm_time_limit_s({"DPROTONET_DEMO": "1"}) < settings.mdm_time_limit_s({})
    assert not settings.demo_mode({"DPROTONET_DEMO": "0"})
