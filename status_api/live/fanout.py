"""Who listens, and handing each change to them: subscriptions with bounded queues.

A change reaches a subscriber by `offer`, which never waits: when the subscriber's queue is
full the oldest change is dropped and the subscriber is marked `lagged` (its stream then tells
the client to resynchronise). One slow browser therefore never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from expert_pipeline.core.auth import Principal
from status_api.live.encoding import ProgressChange


@dataclass(eq=False)
class Subscription:
    """A listener: all changes (`expert_id is None`) or one expert's. An "all" listener with a
    `viewer` only receives the experts that viewer may see (`Principal.sees` on the owner
    carried by each change, read with the tick's one query)."""

    expert_id: str | None
    queue: asyncio.Queue[ProgressChange | None]
    lagged: bool = False
    dropped: int = 0
    viewer: Principal | None = None
    # Who opened it: their token (re-checked while it is open), or local mode (token_id None).
    token_id: str | None = None
    local: bool = False
    # Set when its token is no longer accepted; the stream then ends.
    ended: bool = False

    def wants(self, change: ProgressChange) -> bool:
        return self.viewer is None or self.viewer.sees(change.owner)

    def offer(self, change: ProgressChange) -> bool:
        """Queue without waiting; drop the oldest change when full. True if one was dropped."""
        dropped = False
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.lagged = True
            self.dropped += 1
            dropped = True
        self.queue.put_nowait(change)
        return dropped

    def drain(self) -> list[ProgressChange]:
        items: list[ProgressChange] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return items
            if item is not None:
                items.append(item)

    async def next_batch(self, wait: float) -> list[ProgressChange] | None:
        """The queued changes, waiting up to `wait` seconds for the first (an empty list when
        none came); None once the subscription has ended."""
        if self.ended:
            return None
        try:
            async with asyncio.timeout(wait):
                first = await self.queue.get()
        except TimeoutError:
            return []
        if self.ended:
            return None
        rest = self.drain()
        return [first, *rest] if first is not None else rest

    def end(self) -> None:
        """Mark it ended and wake its stream (a None in the queue) so it stops at once."""
        self.ended = True
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(None)


class Fanout:
    """The open subscriptions, by expert and for everything. Used on the event loop only."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._all: set[Subscription] = set()
        self._by_expert: dict[str, set[Subscription]] = {}

    def __len__(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_expert.values())

    def __iter__(self) -> Iterator[Subscription]:
        yield from self._all
        for group in self._by_expert.values():
            yield from group

    def add(
        self, expert_id: str | None, viewer: Principal | None, opened_by: Principal | None
    ) -> Subscription:
        sub = Subscription(expert_id=expert_id, queue=asyncio.Queue(maxsize=self.queue_size), viewer=viewer)
        if opened_by is not None:
            sub.token_id = opened_by.token_id
            sub.local = opened_by.token_id is None
        if expert_id is None:
            self._all.add(sub)
        else:
            self._by_expert.setdefault(expert_id, set()).add(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        if sub.expert_id is None:
            self._all.discard(sub)
            return
        subs = self._by_expert.get(sub.expert_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_expert[sub.expert_id]

    def clear(self) -> None:
        self._all.clear()
        self._by_expert.clear()

    def send(self, change: ProgressChange, *, to_all: bool = True) -> tuple[int, int]:
        """Offer the change to everyone who wants it: (queued, dropped)."""
        queued = dropped = 0
        for sub in (*(self._all if to_all else ()), *self._by_expert.get(change.expert_id, ())):
            if not sub.wants(change):
                continue
            dropped += sub.offer(change)
            queued += 1
        return queued, dropped
