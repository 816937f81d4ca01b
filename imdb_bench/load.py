"""A cheap HTTP load generator for TorchServe: ``drive(url, key, bodies, concurrency)``.

One asyncio loop writing raw HTTP/1.1, one keep-alive connection per concurrent client. The load
generator shares the 2 cores with the server it measures, so it must be cheap: the first version,
``requests`` sessions on 32 threads, cost more CPU per request than the worker's own batched
prediction; this one takes about 3% of a core.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import numpy as np


def drive(url: str, key: str, bodies: list[bytes], concurrency: int) -> dict:
    """POST every body once (after a warm-up of ``2 * concurrency`` of them) from ``concurrency``
    clients; {requests, errors (non-200 answers), per_s, p50_ms, p99_ms}."""
    return asyncio.run(_drive(urllib.parse.urlsplit(url), key, bodies, concurrency))


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked body) off ``reader``; its status."""
    status = int((await reader.readline()).split()[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        name = name.lower()
        length = int(value) if name == "content-length" else length
        chunked = chunked or (name == "transfer-encoding" and "chunked" in value.lower())
    if chunked:
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)  # the chunk and its CRLF
        await reader.readline()  # the empty trailer
    else:
        await reader.readexactly(length)
    return status


async def _client(conn, head: bytes, queue: list[bytes], out: list[tuple[float, int]]) -> None:
    """Take bodies off the shared queue until it is empty; one (latency, status) per request."""
    reader, writer = conn
    while queue:
        body = queue.pop()
        t0 = time.perf_counter()
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status = await read_response(reader)
        out.append((time.perf_counter() - t0, status))


async def _drive(url: urllib.parse.SplitResult, key: str, bodies: list[bytes], concurrency: int) -> dict:
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\n"
    ).encode()
    conns = [await asyncio.open_connection(url.hostname, url.port) for _ in range(concurrency)]

    async def run(batch: list[bytes]) -> tuple[list[tuple[float, int]], float]:
        queue, out = list(reversed(batch)), []
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(c, head, queue, out) for c in conns))
        return out, time.perf_counter() - t0

    try:
        await run(bodies[: 2 * concurrency])  # warm-up: connections, worker, batch shapes
        results, wall = await run(bodies)
    finally:
        for _, writer in conns:
            writer.close()
    lat = np.array([r[0] for r in results])
    return {
        "requests": len(bodies),
        "errors": sum(r[1] != 200 for r in results),
        "per_s": len(bodies) / wall,
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p99_ms": 1000 * float(np.percentile(lat, 99)),
    }
