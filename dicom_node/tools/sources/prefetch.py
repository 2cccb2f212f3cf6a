"""Retrieval overlapping editing: a bounded window of fetches running in a thread pool.

`prefetched(items, fetch, ...)` yields `(item, future)` in the items' order while up to `window`
fetches are submitted ahead of the consumer and `workers` run at once; so at most `window` retrieved
instances wait in memory, and the editor (the consumer) never waits for the archive unless retrieval
is slower than editing. Items that need no fetch (a skip reason already known) get `None`.
Closing the generator (Ctrl-C, an error) cancels what has not started and waits for what has.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetched(
    items: Iterable[T], fetch: Callable[[T], R], *, workers: int = 4, window: int = 8,
    needs_fetch: Callable[[T], bool] = lambda _: True,
) -> Generator[tuple[T, Future[R] | None], None, None]:
    window = max(window, workers, 1)
    pending: deque[tuple[T, Future[R] | None]] = deque()
    source = iter(items)
    pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="x2x-fetch")
    in_flight = 0  # submitted futures in the window (items without a fetch do not count)

    def top_up() -> None:
        nonlocal in_flight
        while in_flight < window:
            item = next(source, None)
            if item is None:
                return
            if needs_fetch(item):
                pending.append((item, pool.submit(fetch, item)))
                in_flight += 1
            else:
                pending.append((item, None))

    try:
        top_up()
        while pending:
            item, future = pending.popleft()
            if future is not None:
                in_flight -= 1
            yield item, future
            top_up()
    finally:
        for _, future in pending:
            if future is not None:
                future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
