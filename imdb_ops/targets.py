"""The servers the reliability runs drive (imdb_ops.soak, imdb_ops.chaos; docs/reliability.md).

Either server is started privately from the archive as shipped, on free loopback ports, and
stopped by pid whatever happens:

* ``torchserve``: config.properties (token on) and log4j2.xml, as ``make serve`` starts it; a kill
  hits the Python worker (SIGKILL), and the frontend starts a new one.
* ``kserve``: ``python -m kserve_server`` in a ``Container``: when the process dies it is started
  again on the same port, as the kubelet restarts a pod's container (restartPolicy Always); a kill
  hits the whole process group, as an OOM kill or a crash takes the container.

A ``Target`` gives the runs what they need: the inference URL and token, the processes whose
memory counts, the kill, the log bytes. ``RssSampler`` samples that memory every few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from imdb_ops import build_mar, serve, serve_kserve

REPO = Path(__file__).resolve().parent.parent
MODEL = "imdb_sentiment"
SERVERS = ("torchserve", "kserve")


@dataclass
class Target:
    server: str  # torchserve | kserve
    url: str  # the inference address (TorchServe's routes on both)
    token: str | None
    processes: Callable[[], list[int]]  # whose resident memory counts
    kill: Callable[[], int]  # SIGKILL to the worker (TorchServe) or the server (KServe): the pid hit
    log_bytes: Callable[[], int]
    restarts: list[dict] = field(default_factory=list)  # the KServe container's restarts

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def rss_mb(pids: list[int]) -> float:
    """Resident memory of ``pids`` together, MB (from /proc; a process gone meanwhile counts 0)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
        except (OSError, StopIteration):
            pass
    return round(total / 1024, 1)


def _bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


# ---------------------------------------------------------------- TorchServe


def ts_workers(server: serve.Server) -> list[int]:
    """PIDs of the model's READY workers (management API)."""
    r = requests.get(
        f"{server.management}/models/{MODEL}",
        headers={"Authorization": f"Bearer {server.keys()['management']}"},
        timeout=10,
    )
    return [w["pid"] for m in r.json() for w in m.get("workers", []) if w.get("status") == "READY"]


def _kill_worker(server: serve.Server) -> int:
    (victim,) = ts_workers(server)[:1]
    os.kill(victim, signal.SIGKILL)
    return victim


@contextmanager
def torchserve(tmp: Path, store: Path, timeout: float = 300) -> Iterator[Target]:
    with serve.running(tmp / "work", serve.isolated_config(tmp / "config.properties"), store, timeout) as server:
        yield Target(
            "torchserve",
            server.inference,
            server.keys()["inference"],
            processes=lambda: [server.pid, *serve.children_of(server.pid)],
            kill=lambda: _kill_worker(server),
            log_bytes=lambda: _bytes(list((server.workdir / "logs").glob("*"))),
        )


# ---------------------------------------------------------------- KServe


class Container:
    """``python -m kserve_server`` on one port, started again ``restart_delay`` seconds after it
    dies (the kubelet restarts a crashed container at once the first time, then backs off)."""

    def __init__(self, mar: Path, log: Path, restart_delay: float = 0.0, timeout: float = 120) -> None:
        self.mar, self.log, self.restart_delay, self.timeout = mar, log, restart_delay, timeout
        self.port = serve.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.restarts: list[dict] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.process = self._start()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _start(self) -> subprocess.Popen:
        with self.log.open("a") as log:
            process = serve_kserve.launch(self.mar, self.port, log)
        serve_kserve.wait_ready(self.url, process, self.timeout, self.log)
        return process

    def _watch(self) -> None:
        while not self._stopping.is_set():
            self.process.wait()
            died = time.time()
            time.sleep(self.restart_delay)
            with self._lock:
                if self._stopping.is_set():
                    return
                self.process = self._start()
            self.restarts.append({"died": died, "ready_s": round(time.time() - died, 2), "pid": self.process.pid})

    def kill(self) -> int:
        pid = self.process.pid
        os.killpg(pid, signal.SIGKILL)
        return pid

    def pids(self) -> list[int]:
        return [self.process.pid, *serve.children_of(self.process.pid)]

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            if self.process.poll() is None:
                serve_kserve.stop_group(self.process.pid, lambda: self.process.poll() is None)
            self.process.wait()
        self._watcher.join(timeout=10)


@contextmanager
def kserve(tmp: Path, store: Path, restart_delay: float = 0.0) -> Iterator[Target]:
    container = Container(store / f"{MODEL}.mar", tmp / "kserve_server.log", restart_delay)
    try:
        yield Target(
            "kserve",
            container.url,
            None,
            processes=container.pids,
            kill=container.kill,
            log_bytes=lambda: _bytes([container.log]),
            restarts=container.restarts,
        )
    finally:
        container.stop()


@contextmanager
def started(server: str, restart_delay: float = 0.0) -> Iterator[Target]:
    """``server`` (torchserve | kserve) on the archive as shipped, in a private temporary folder."""
    with tempfile.TemporaryDirectory(prefix=f"imdb_{server}_") as tmp:
        d = Path(tmp)
        build_mar.build(REPO / "model_store" / "artifacts", d / "store")
        if server == "torchserve":
            with torchserve(d, d / "store") as target:
                yield target
        else:
            with kserve(d, d / "store", restart_delay) as target:
                yield target


# ---------------------------------------------------------------- memory over time


class RssSampler:
    """The target's resident memory at the start, every ``interval`` seconds, and at ``stop``."""

    def __init__(self, target: Target, interval: float = 10.0) -> None:
        self.target, self.interval = target, interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.started = time.time()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        self.samples.append((round(time.time() - self.started, 1), rss_mb(self.target.processes())))

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self._sample()

    def report(self) -> dict:
        """start, peak, end, the growth in each half of the run (a plateau: the second half's is ~0)."""
        mb = [m for _, m in self.samples]
        half = len(mb) // 2
        return {
            "interval_s": self.interval,
            "start_mb": mb[0],
            "peak_mb": max(mb),
            "end_mb": mb[-1],
            "growth_first_half_mb": round(mb[half] - mb[0], 1),
            "growth_second_half_mb": round(mb[-1] - mb[half], 1),
            "samples": [list(s) for s in self.samples],
        }
