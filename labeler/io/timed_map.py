"""Mapping a function over items on a few threads, with a time limit per item.

``concurrent.futures`` cannot give up on a call: a read blocked in the kernel
(a hung network mount, a peer that stops sending) keeps its thread, and the
pool's exit hook joins that thread forever. Here each item gets ``timeout``
seconds from the moment a thread starts it; an item that overruns gets the
``on_timeout`` result, its thread is abandoned (a daemon, it cannot keep the
process alive) and a new thread carries on with the remaining items.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_with_deadline(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    *,
    threads: int,
    timeout: float,
    on_timeout: Callable[[Item], Result],
) -> list[Result]:
    """``[function(item) for item in items]`` on up to ``threads`` threads, each
    call limited to ``timeout`` seconds (``on_timeout(item)`` stands in for a
    call that overran). ``function`` must not raise."""
    count = len(items)
    results: list = [None] * count
    started: dict[int, float] = {}
    finished: set[int] = set()
    cursor = [0]
    condition = threading.Condition()

    def work() -> None:
        while True:
            with condition:
                if cursor[0] >= count:
                    return
                index = cursor[0]
                cursor[0] += 1
                started[index] = time.monotonic()
            value = function(items[index])
            with condition:
                if index in finished:  # overran: a replacement thread took over
                    return
                results[index] = value
                finished.add(index)
                condition.notify_all()

    def spawn() -> None:
        threading.Thread(target=work, name="labeler-read", daemon=True).start()

    for _ in range(min(threads, count)):
        spawn()
    with condition:
        while len(finished) < count:
            now = time.monotonic()
            running = {i: now - t for i, t in started.items() if i not in finished}
            for index in [i for i, elapsed in running.items() if elapsed >= timeout]:
                results[index] = on_timeout(items[index])
                finished.add(index)
                spawn()
            left = [timeout - elapsed for i, elapsed in running.items() if i not in finished]
            condition.wait(timeout=max(0.01, min(left, default=timeout)))
    return results
