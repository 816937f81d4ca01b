"""The KServe server's micro-batcher (kserve_server.batcher): batches under concurrency, a lone
request alone after the delay, a full queue refused at once, failures delivered to each waiter."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kserve_server.batcher import MicroBatcher, QueueFull


def run_async(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_answered_in_batches_of_at_most_max_batch() -> None:
    seen: list[list[int]] = []

    def work(items: list[int]) -> list[int]:
        seen.append(items)
        time.sleep(0.02)  # the model's time: requests queue up meanwhile
        return [i * 10 for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(work, max_batch=8, max_delay=0.005, max_queue=64)
        return await asyncio.gather(*(batcher.submit(i) for i in range(32)))

    assert run_async(main()) == [i * 10 for i in range(32)]  # each request gets its own answer, in order
    assert max(len(b) for b in seen) == 8 and len(seen) <= 6  # 32 requests in a handful of batches
    assert sorted(i for b in seen for i in b) == list(range(32))


def test_a_lone_request_waits_at_most_the_delay() -> None:
    async def main() -> tuple[int, float, list[int]]:
        batcher = MicroBatcher(lambda items: items, max_batch=8, max_delay=0.05, max_queue=8)
        t0 = time.perf_counter()
        answer = await batcher.submit(7)
        return answer, time.perf_counter() - t0, batcher.batch_sizes

    answer, waited, sizes = run_async(main())
    assert answer == 7 and sizes == [1] and 0.04 <= waited < 1.0


def test_a_full_queue_is_refused_at_once_and_the_queued_requests_are_still_answered() -> None:
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    async def main():
        batcher = MicroBatcher(slow, max_batch=1, max_delay=0.0, max_queue=2)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # 0 is now being answered; 1 and 2 fill the queue
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as full:
            await batcher.submit(3)
        release.set()
        return full.value.retry_after, await first, await asyncio.gather(*queued)

    retry_after, first, queued = run_async(main())
    assert retry_after >= 1 and first == 0 and queued == [1, 2]


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_batch_runs() -> None:
    def flaky(items: list[int]) -> list[int]:
        if 0 in items:
            raise RuntimeError("model failed")
        return items

    async def main():
        batcher = MicroBatcher(flaky, max_batch=2, max_delay=0.01, max_queue=8)
        failed = await asyncio.gather(batcher.submit(0), batcher.submit(1), return_exceptions=True)
        return failed, await batcher.submit(5)

    failed, later = run_async(main())
    assert all(isinstance(f, RuntimeError) for f in failed) and later == 5
