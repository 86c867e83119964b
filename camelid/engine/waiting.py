"""The queue of requests waiting to be admitted to the running batch, fair between owners (API keys).

Preempted requests come back first: they were running, and their blocks were taken for older requests. Then one
request from each owner in turn, first come first served within an owner. With one FIFO queue, one key's 40,000
queued requests made every other key wait for all of them (a chat timed out after 120 s).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from camelid.engine.request import Request


class WaitQueue:
    """Requests (anything with an `owner`) in admission order: `peek` the next, `pop` it, `push` a new one."""

    def __init__(self):
        self.resumed: collections.deque[Request] = collections.deque()
        self.owners: dict[str, collections.deque[Request]] = {}  # insertion order is the turn order

    def push(self, req: Request) -> None:
        self.owners.setdefault(req.owner, collections.deque()).append(req)

    def push_front(self, req: Request) -> None:
        self.resumed.appendleft(req)

    def peek(self) -> Request:
        return self.resumed[0] if self.resumed else next(iter(self.owners.values()))[0]

    def pop(self) -> Request:
        if self.resumed:
            return self.resumed.popleft()
        owner = next(iter(self.owners))
        reqs = self.owners.pop(owner)
        req = reqs.popleft()
        if reqs:
            self.owners[owner] = reqs  # this owner's turn is over: to the back of the line
        return req

    def take(self, pick: Callable[[Request], bool]) -> list[Request]:
        """Remove and return the requests `pick` selects, in one pass (cancelling a whole backlog stays linear)."""
        taken = [r for r in self if pick(r)]
        if taken:
            ids = {id(r) for r in taken}
            self.resumed = collections.deque(r for r in self.resumed if id(r) not in ids)
            owners = {o: collections.deque(r for r in q if id(r) not in ids) for o, q in self.owners.items()}
            self.owners = {o: q for o, q in owners.items() if q}
        return taken

    def __len__(self) -> int:
        return len(self.resumed) + sum(len(q) for q in self.owners.values())

    def __iter__(self) -> Iterator[Request]:
        return itertools.chain(self.resumed, *self.owners.values())
