"""Start, stop or check imdb_sentiment on KServe's Python model server (`make serve-kserve`).

usage: python scripts/serve_kserve.py start|stop|status [--model model_store/imdb_sentiment.mar]
                                      [--port 8085] [--timeout 120]

Runs ``python -m kserve_server`` in the background on 127.0.0.1 (HTTP only: gRPC off), logging
to logs/kserve_server.log, its pid in logs/kserve_server.pid; stopped by that pid (TERM, then
KILL). 8085, not KServe's 8080: TorchServe's `make serve` holds 8080, and both may run at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imdb_ops.serve import free_port

REPO = Path(__file__).resolve().parent.parent
LOGS = REPO / "logs"
PID = LOGS / "kserve_server.pid"


def _pid() -> int | None:
    try:
        pid = int(PID.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def launch(model: Path, port: int, log, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "kserve_server", "--model", str(model), "--port", str(port), *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    """Return once ``url`` is ready; RuntimeError with the log's tail if the server dies or times out."""
    deadline = time.time() + timeout
    while not ready(url):
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"kserve_server did not become ready:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


def stop_group(pid: int, alive, grace: float = 35) -> None:
    """TERM to the server's process group, KILL after ``grace`` seconds if ``alive()`` still holds."""
    os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while alive() and time.time() < deadline:
        time.sleep(0.2)
    if alive():
        os.killpg(pid, signal.SIGKILL)


def start(model: Path, port: int, timeout: float) -> str:
    """The server's URL once ready; exits with its log's tail if it dies or times out."""
    LOGS.mkdir(exist_ok=True)
    log = LOGS / "kserve_server.log"
    process = launch(model, port, log.open("w"))
    PID.write_text(str(process.pid))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout, log)
    except RuntimeError as err:
        stop()
        sys.exit(str(err))
    return url


def stop() -> None:
    pid = _pid()
    if pid is not None:
        stop_group(pid, lambda: _pid() is not None)
    PID.unlink(missing_ok=True)


@contextmanager
def running(model: Path, *extra: str, timeout: float = 120) -> Iterator[str]:
    """A server of its own (tests, benchmarks): ``model`` on a free loopback port, its URL while it
    runs; stopped by its process group whatever happens. Its log goes to a temporary file (a pipe
    would fill and stall it)."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w+", prefix="kserve_server-", suffix=".log") as log:
        process = launch(model, port, log, *extra)
        try:
            wait_ready(f"http://127.0.0.1:{port}", process, timeout, Path(log.name))
            yield f"http://127.0.0.1:{port}"
        finally:
            if process.poll() is None:
                stop_group(process.pid, lambda: process.poll() is None)
            process.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--model", type=Path, default=REPO / "model_store" / "imdb_sentiment.mar")
    p.add_argument("--port", type=int, default=8085)
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for readiness")
    a = p.parse_args(argv)
    if a.action == "start":
        if _pid():
            sys.exit(f"kserve_server already runs (pid {_pid()}); `make stop` first")
        url = start(a.model, a.port, a.timeout)
        print(f"KServe's model server is serving imdb_sentiment at {url} (pid {_pid()}). Logs: {LOGS}. Try:\n")
        print(f"curl -s -d 'It was a fantastic performance !' {url}/explanations/imdb_sentiment\n")
    elif a.action == "stop":
        stop()
        print("kserve_server stopped")
    else:
        print(f"kserve_server running (pid {_pid()})" if _pid() else "kserve_server not running")


if __name__ == "__main__":
    main()
