"""The KServe server (kserve_server) for tests: started as `make serve-kserve` starts it, on a free
loopback port, and stopped by pid (its process group) whatever happens."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from helpers import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(model: Path, *extra: str, timeout: float = 120) -> Iterator[str]:
    """The server's URL while it runs ``model`` (a .mar, or an artifacts folder with ``extra``)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="kserve_server-", suffix=".log")  # not a pipe: it would fill
    process = subprocess.Popen(
        [sys.executable, "-m", "kserve_server", "--model", str(model), "--port", str(port), *extra],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, timeout, Path(log.name))
        yield url
    finally:
        _stop(process)
        log.close()


def _wait_ready(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kserve_server exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise TimeoutError("kserve_server did not become ready")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(35)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
