"""Sharing the cores among users who explain at the same time: one MDM optimisation at a time, first come first
served.

The policy (README, "Several users at once"): an explanation is a few hundred steps of one batch through the
network, each step already spread over all of torch's threads, so two at once only split the same cores and both
finish later. They therefore run one after the other, in order of arrival, each with every thread; a waiting
request is told how many are ahead of it and can be cancelled while it waits. Nobody starves: a request waits at
most for those that arrived before it. Predictions (one forward pass) are not queued.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

WaitingFn = Callable[[int], None]  # called with the number of explanations ahead, about twice a second
CancelFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """The request was cancelled while it waited for its turn."""


class ExplanationQueue:
    """A FIFO turn for the process's MDM runs (tickets in order of arrival; a cancelled ticket is skipped)."""

    def __init__(self, poll_s: float = 0.5) -> None:
        self._cond = threading.Condition()
        self._next = 0  # the next ticket to hand out
        self._serving = 0  # the ticket whose turn it is
        self._abandoned: set[int] = set()
        self.poll_s = poll_s

    def _advance(self) -> None:
        """Under the lock: the turn passes to the next ticket still waiting."""
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    def _leave(self, ticket: int) -> None:
        """A request gives up before or at its turn: the turn passes on, or the ticket will be skipped."""
        with self._cond:
            if self._serving == ticket:
                self._advance()
            else:
                self._abandoned.add(ticket)

    def ahead(self, ticket: int) -> int:
        with self._cond:
            return ticket - self._serving - sum(1 for t in self._abandoned if self._serving < t < ticket)

    def __len__(self) -> int:
        """Requests running or waiting."""
        with self._cond:
            return self._next - self._serving - len(self._abandoned)

    @contextlib.contextmanager
    def turn(self, waiting: WaitingFn | None = None, cancel: CancelFn | None = None) -> Iterator[int]:
        """Wait for this request's turn (telling `waiting` how many are ahead), run the body, pass the turn on."""
        with self._cond:
            ticket = self._next
            self._next += 1
        try:
            while True:
                with self._cond:
                    if self._serving == ticket:
                        break
                    self._cond.wait(self.poll_s)
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
