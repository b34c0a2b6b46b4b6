"""Sharing the cores among users who explain at the same time: one MDM optimisation at a time, first come first
served.

The policy (README, "Several users at once"): an explanation is a few hundred steps of one batch through the
network, each step already spread over all of torch's threads, so two at once only split the same cores and both
finish later. They therefore run one after the other, in order of arrival, each with every thread; a waiting
request is told how many are ahead of it and can be cancelled while it waits. Nobody starves: a request waits at
most for those that arrived before it. Predictions (one forward pass) are not queued.

One user cannot starve the others: a session holds at most one waiting request (a newer one from the same
session replaces its older waiting one, which gives up), and at most `max_waiting` requests wait in all; one more
is refused at once (QueueFull) with a message the page shows, instead of waiting behind hours of work.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from dprotonet_core.review.settings import MAX_WAITING_EXPLANATIONS

WaitingFn = Callable[[int], None]  # called with the number of explanations ahead, about twice a second
CancelFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """The request was cancelled while it waited for its turn (or replaced by a newer one of its session)."""


class QueueFull(RuntimeError):
    """As many requests are waiting as the queue takes; the message says so in one line."""




class ExplanationQueue:
    """A FIFO turn for the process's MDM runs (tickets in order of arrival; a cancelled ticket is skipped), at most
    `max_waiting` waiting and one waiting per owner (a session)."""

    def __init__(self, poll_s: float = 0.5, max_waiting: int = MAX_WAITING_EXPLANATIONS) -> None:
        self._cond = threading.Condition()
        self._next = 0  # the next ticket to hand out
        self._serving = 0  # the ticket whose turn it is
        self._abandoned: set[int] = set()
        self._owners: dict[int, str] = {}  # ticket -> owner, while the ticket waits or runs
        self._replaced: set[int] = set()  # waiting tickets whose owner asked again: they give up at their next poll
        self.poll_s = poll_s
        self.max_waiting = max_waiting

    def _advance(self) -> None:
        """Under the lock: the turn passes to the next ticket still waiting."""
        self._owners.pop(self._serving, None)
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    def _leave(self, ticket: int) -> None:
        """A request gives up before or at its turn: the turn passes on, or the ticket will be skipped."""
        with self._cond:
            self._replaced.discard(ticket)
            if self._serving == ticket:
                self._advance()
            else:
                self._owners.pop(ticket, None)
                self._abandoned.add(ticket)

    def ahead(self, ticket: int) -> int:
        with self._cond:
            return ticket - self._serving - sum(1 for t in self._abandoned if self._serving < t < ticket)

    def _waiting(self) -> int:
        """Under the lock: requests waiting for their turn (not the one running, not those replaced)."""
        running = 1 if self._serving < self._next else 0
        return self._next - self._serving - len(self._abandoned) - running - len(self._replaced)

    def waiting(self) -> int:
        """Requests waiting for their turn."""
        with self._cond:
            return self._waiting()

    def __len__(self) -> int:
        """Requests running or waiting."""
        with self._cond:
            return self._next - self._serving - len(self._abandoned)

    def _take_ticket(self, owner: str | None) -> int:
        with self._cond:
            if owner is not None:  # this session's earlier request, if it still waits, is replaced by this one
                self._replaced.update(t for t, o in self._owners.items()
                                      if o == owner and t != self._serving and t not in self._replaced)
                self._cond.notify_all()
            if self._serving < self._next and self._waiting() >= self.max_waiting:
                raise QueueFull(f"{self._waiting()} explanations are already waiting, the most this server queues")
            ticket = self._next
            self._next += 1
            if owner is not None:
                self._owners[ticket] = owner
            return ticket

    @contextlib.contextmanager
    def turn(self, waiting: WaitingFn | None = None, cancel: CancelFn | None = None,
             owner: str | None = None) -> Iterator[int]:
        """Wait for this request's turn (telling `waiting` how many are ahead), run the body, pass the turn on.

        `owner` (a session id): a newer request of the same owner replaces this one while it waits (Cancelled).
        Raises QueueFull at once when `max_waiting` requests wait already."""
        ticket = self._take_ticket(owner)
        try:
            while True:
                with self._cond:
                    if ticket in self._replaced:
                        raise Cancelled("replaced by a newer request of the same session")
                    if self._serving == ticket:
                        break
                    self._cond.wait(self.poll_s)
                    if ticket in self._replaced:
                        raise Cancelled("replaced by a newer request of the same session")
                    if self._serving == ticket:
                        break
                if cancel is not None and cancel():
                    raise Cancelled("cancelled while waiting for its turn")
                if waiting is not None:
                    waiting(self.ahead(ticket))  # may raise too (Streamlit stops a run from its progress callback)
        except BaseException:
            self._leave(ticket)
            raise
        try:
            yield ticket
        finally:
            with self._cond:
                self._advance()


EXPLAINER = ExplanationQueue()  # the one queue of this server process
