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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def start(model: Path, port: int, timeout: float) -> str:
    """The server's URL once ready; exits with its log's tail if it dies or times out."""
    LOGS.mkdir(exist_ok=True)
    log = (LOGS / "kserve_server.log").open("w")
    command = [sys.executable, "-m", "kserve_server", "--model", str(model), "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    PID.write_text(str(process.pid))
    url, deadline = f"http://127.0.0.1:{port}", time.time() + timeout
    while not ready(url):
        if process.poll() is not None or time.time() > deadline:
            stop()
            tail = (LOGS / "kserve_server.log").read_text(errors="replace")[-3000:]
            sys.exit(f"kserve_server did not become ready:\n{tail}")
        time.sleep(0.5)
    return url


def stop(grace: float = 35) -> None:
    pid = _pid()
    if pid is not None:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + grace
        while _pid() is not None and time.time() < deadline:
            time.sleep(0.2)
        if _pid() is not None:
            os.killpg(pid, signal.SIGKILL)
    PID.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(model: Path, *extra: str, timeout: float = 120) -> Iterator[str]:
    """A server of its own (tests, benchmarks): ``model`` on a free loopback port, its URL while it
    runs; stopped by its process group whatever happens. Its log goes to a temporary file (a pipe
    would fill and stall it)."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w+", prefix="kserve_server-", suffix=".log") as log:
        command = [sys.executable, "-m", "kserve_server", "--model", str(model), "--port", str(port), *extra]
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url, deadline = f"http://127.0.0.1:{port}", time.time() + timeout
        try:
            while not ready(url):
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"kserve_server did not become ready:\n{Path(log.name).read_text()[-3000:]}")
                time.sleep(0.3)
            yield url
        finally:
            _terminate(process)


def _terminate(process: subprocess.Popen, grace: float = 35) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
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
