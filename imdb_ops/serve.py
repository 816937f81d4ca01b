"""Start, stop and check a TorchServe instance serving imdb_sentiment.

usage: python scripts/serve.py {start,stop,status} [--workdir .] [--config config.properties]
                               [--model-store model_store] [--timeout 600]

TorchServe writes logs/ and key_file.json into its working directory and keeps its pid file under
$TMPDIR, so each instance gets its own working directory and TMPDIR (``<workdir>/tmp``). The same
functions start the throw-away servers of the integration tests and the benchmark.

What ``start`` adds to ``torchserve --start``:
  * the effective configuration (``<workdir>/tmp/ts.properties``): ``allowed_urls`` pinned to
    ``file://<absolute model store>/<name>.mar`` (no sub-folder, no ``..``), the workflow store
    pinned to the model store, and log4j2.xml (rotated, bounded logs);
  * a start that fails loudly: a model that cannot be registered (a corrupt archive) or whose
    worker dies while loading stops the server within seconds and raises with the cause from
    ts_log.log / model_log.log, instead of waiting for the timeout;
  * logs/torchserve.out (the JVM's own stdout) restarts empty, the previous run's kept as .1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOG_CONFIG = REPO / "log4j2.xml"
# Lines of ts_log.log / model_log.log that mean a model will not come up: the archive could not be
# registered, or its worker died while loading (TorchServe would retry it forever).
FAILURE = re.compile(
    r"Failed to (?:register|load) model|ModelException|InvalidModelException|DownloadArchiveException"
    r"|ZipException|Load model failed|Backend worker process died|sha256 mismatch"
    # A worker whose initialize raised (e.g. the handler's checksum check) is retried forever.
    r"|Worker disconnected\. WORKER_ERROR|Auto recovery failed"
)


@dataclass
class Server:
    workdir: Path
    inference: str  # http://host:port
    management: str
    metrics: str
    pid: int | None = None

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    def keys(self) -> dict:
        data = json.loads(self.key_file.read_text())
        return {"inference": data["inference"]["key"], "management": data["management"]["key"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_config(dest: Path, source: Path = REPO / "config.properties", **overrides: str) -> Path:
    """A copy of ``source`` on free loopback ports, so that servers never meet on one machine.

    Besides its three HTTP APIs TorchServe binds gRPC (7070/7071) and names its worker socket
    /tmp/.ts.sock.<initial_worker_port> (java.io.tmpdir, not $TMPDIR; 9000 by default): all move.
    ``overrides`` set further keys (e.g. service_envelope, model_store).
    """
    worker_port = next(p for p in iter(free_port, None) if not Path(f"/tmp/.ts.sock.{p}").exists())
    values = {f"{api}_address": f"http://127.0.0.1:{free_port()}" for api in ("inference", "management", "metrics")}
    values.update(
        grpc_inference_port=str(free_port()),
        grpc_management_port=str(free_port()),
        initial_worker_port=str(worker_port),
        metrics_config=str(REPO / "metrics.yaml"),
        **overrides,
    )
    text = Path(source).read_text()
    for key, value in values.items():
        text, found = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        if not found:
            text += f"\n{key}={value}"
    Path(dest).write_text(text + "\n")
    return Path(dest)


def read_properties(config: Path) -> dict[str, str]:
    props = {}
    for line in Path(config).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            props[k.strip()] = v.strip()
    return props


def store_url_pattern(model_store: Path) -> str:
    """``allowed_urls`` for archives in ``model_store`` itself: file://<store>/<name>.mar, where the
    name has no "/" (no sub-folder, no traversal). Java regex, written without backslashes (the
    properties format would eat them): special characters of the path go in [x] classes."""
    path = str(Path(model_store).resolve())
    if any(c in path for c in "[]^\\"):
        raise ValueError(f"model store path {path!r} has characters allowed_urls cannot quote")
    quoted = "".join(c if c.isalnum() or c in "/_-" else f"[{c}]" for c in path)
    return f"file://{quoted}/[a-z0-9_][a-z0-9_.-]*[.]mar"


def effective_config(config: Path, model_store: Path, workdir: Path) -> Path:
    """``config`` with allowed_urls and the stores pinned to ``model_store`` (see the module doc)."""
    pinned = {
        "allowed_urls": store_url_pattern(model_store),
        "model_store": str(Path(model_store).resolve()),
        "workflow_store": str(Path(model_store).resolve()),
    }
    text = Path(config).read_text()
    for key, value in pinned.items():
        text, found = re.subn(rf"^{key}=.*$", lambda _m, k=key, v=value: f"{k}={v}", text, flags=re.M)
        if not found:
            text += f"\n{key}={value}"
    dest = Path(workdir) / "tmp" / "ts.properties"
    dest.write_text(text + "\n")
    return dest


def read_addresses(config: Path) -> dict[str, str]:
    props = read_properties(config)
    return {
        k: props.get(f"{k}_address", d)
        for k, d in (
            ("inference", "http://127.0.0.1:8080"),
            ("management", "http://127.0.0.1:8081"),
            ("metrics", "http://127.0.0.1:8082"),
        )
    }


def _bin(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


def _env(workdir: Path) -> dict:
    env = dict(os.environ, TMPDIR=str(workdir / "tmp"))
    # The worker imports the handler package from the .mar; Java must find the venv's python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def start(
    workdir: Path,
    config: Path,
    model_store: Path,
    timeout: float = 600,
    models: str | None = None,
    log_config: Path = LOG_CONFIG,
) -> Server:
    """Start TorchServe in the background; return once every model it loads has a READY worker.

    Raises RuntimeError with the log lines that say why, as soon as TorchServe exits, a model
    fails to register or a worker dies while loading (and stops the server first)."""
    workdir = Path(workdir).resolve()
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    config = effective_config(config, model_store, workdir)
    addr = read_addresses(config)
    cmd = [
        _bin("torchserve"),
        "--start",
        "--ncs",
        "--ts-config",
        str(config),
        "--model-store",
        str(Path(model_store).resolve()),
        "--workflow-store",
        str(Path(model_store).resolve()),
        "--log-config",
        str(log_config),
    ]
    if models:
        cmd += ["--models", models]
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    out_file = logs / "torchserve.out"
    if out_file.exists():
        out_file.replace(logs / "torchserve.out.1")
    # The JVM outlives this call: give it a log file, not our stdout (a pipe would never close).
    with open(out_file, "wb") as out:
        subprocess.run(
            cmd,
            cwd=workdir,
            env=_env(workdir),
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(workdir, addr["inference"], addr["management"], addr["metrics"])
    names = expected_models(config, models)
    deadline = time.time() + timeout
    while time.time() < deadline:
        server.pid = server.pid or _pid(workdir)
        cause = failure(server)
        if cause:
            cause = settled_failure(server, cause)
            stop(server)
            raise RuntimeError(f"TorchServe could not serve {', '.join(names)}:\n{cause}")
        if _healthy(server) and all(_model_ready(server, name) for name in names):
            return server
        time.sleep(0.5)
    stop(server)
    raise RuntimeError(f"TorchServe did not become ready in {timeout}s; logs:\n{log_tail(workdir)}")


def expected_models(config: Path, models: str | None = None) -> list[str]:
    """Model names from ``--models`` or the config's load_models (name=archive, comma-separated)."""
    spec = models or read_properties(config).get("load_models", "")
    return sorted({entry.split("=", 1)[0].strip() for entry in spec.split(",") if entry.strip()})


def failure(server: Server) -> str | None:
    """Why the server will not come up, or None while it still may: TorchServe exited, or a log
    line of FAILURE in ts_log.log (with the lines after it), plus the worker's last words from
    model_log.log (a Python traceback names the cause: a bad archive file, a checksum mismatch)."""
    if server.pid is not None and not _alive(server.pid):
        return f"TorchServe exited.\n{log_tail(server.workdir)}"
    lines = _lines(server.workdir / "logs" / "ts_log.log")
    hit = next((i for i, line in enumerate(lines) if FAILURE.search(line)), None)
    if hit is None:
        return None
    summary, worker_log = _worker_words(server.workdir)
    cause = "\n".join(lines[hit : hit + 12])
    return f"{summary}ts_log.log:\n{cause}{worker_log}"


def _worker_words(workdir: Path) -> tuple[str, str]:
    """("cause: <the handler's exception>\n" or "", "\nmodel_log.log:\n<its last 15 lines>" or ""):
    the worker's MODEL_LOG lines, read only once ts_log.log has a FAILURE line. TorchServe's worker
    logs the handler's exception in one line before the traceback: that line is the summary."""
    worker = [line for line in _lines(workdir / "logs" / "model_log.log") if "MODEL_LOG" in line]
    first = next((line.split("MODEL_LOG - ", 1)[-1] for line in worker if "Failed to load model" in line), None)
    summary = f"cause: {first}\n" if first else ""
    return summary, ("\nmodel_log.log:\n" + "\n".join(worker[-15:]) if worker else "")


def settled_failure(server: Server, cause: str, grace: float = 5.0) -> str:
    """The failure once the worker's own words are in: TorchServe's frontend copies the worker's
    output into model_log.log on other threads than the one that logs the death to ts_log.log, so
    the "Failed to load model" line can land a moment after the death. Waits up to ``grace``
    seconds for it, less if TorchServe has exited (its logs are then complete), and gives the
    fullest cause seen."""
    deadline = time.time() + grace
    while not cause.startswith(("cause: ", "TorchServe exited")) and time.time() < deadline:
        time.sleep(0.2)
        cause = failure(server) or cause
    return cause


def _lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines() if log.exists() else []


def log_tail(workdir: Path, chars: int = 3000) -> str:
    parts = []
    for name in ("ts_log.log", "model_log.log", "torchserve.out"):
        log = Path(workdir) / "logs" / name
        if log.exists() and log.stat().st_size:
            parts.append(f"--- {name}\n{log.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts) or "(no logs)"


def _healthy(server: Server) -> bool:
    try:
        req = urllib.request.Request(
            server.inference + "/ping", headers={"Authorization": f"Bearer {server.keys()['inference']}"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read()).get("status") == "Healthy"
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return False


def _model_ready(server: Server, name: str = "imdb_sentiment") -> bool:
    """Healthy /ping comes before the workers load: every version of ``name`` has a READY worker."""
    try:
        req = urllib.request.Request(
            server.management + f"/models/{name}/all",
            headers={"Authorization": f"Bearer {server.keys()['management']}"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            versions = json.loads(r.read())
            return bool(versions) and all(
                any(w.get("status") == "READY" for w in m.get("workers", [])) for m in versions
            )
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return False


def _pid(workdir: Path) -> int | None:
    f = workdir / "tmp" / ".model_server.pid"
    if f.exists() and f.read_text().strip().isdigit():
        return int(f.read_text().strip())
    return None


@contextmanager
def running(workdir: Path, config: Path, model_store: Path, timeout: float = 600) -> Iterator[Server]:
    """A started TorchServe, stopped by pid whatever happens: also when the start itself fails
    after the JVM came up (then by the pid file in ``workdir``)."""
    try:
        server = start(workdir, config, model_store, timeout=timeout)
    except BaseException:
        stop(workdir)
        raise
    try:
        yield server
    finally:
        stop(server)


def stop(server: Server | Path, grace: float = 15) -> None:
    """Stop by pid (TERM, then KILL), including the Python workers the JVM started.

    The JVM is frozen (SIGSTOP) before its workers are listed: a JVM busy scaling up (a scale call
    of hundreds of workers) would otherwise start workers after the list was taken, and they would
    outlive it, orphaned. Frozen, it starts none; its children are killed, then the JVM itself."""
    workdir = server.workdir if isinstance(server, Server) else Path(server).resolve()
    pid = (server.pid if isinstance(server, Server) else None) or _pid(workdir)
    if pid is None:
        return
    _signal(pid, signal.SIGSTOP)
    children = children_of(pid)
    _signal_all(children, signal.SIGTERM)
    _wait_gone(children, grace)
    _signal_all(children, signal.SIGKILL)
    # Then the JVM: its TERM is sent while it is still frozen and acted on once it continues.
    _signal(pid, signal.SIGTERM)
    _signal(pid, signal.SIGCONT)
    _wait_gone([pid], grace)
    _signal(pid, signal.SIGKILL)
    (workdir / "tmp" / ".model_server.pid").unlink(missing_ok=True)


def _wait_gone(pids: list[int], grace: float) -> None:
    """Wait up to ``grace`` seconds for every one of ``pids`` to exit (a zombie counts as exited)."""
    deadline = time.time() + grace
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,ppid=", "-e"], capture_output=True, text=True).stdout
    tree = [tuple(map(int, line.split())) for line in out.splitlines() if line.strip()]
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [c for c, pp in tree if pp == parent]
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return not re.search(r"\bZ\b", Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3])
    except (ProcessLookupError, FileNotFoundError):
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        _signal(p, sig)


def curl_hint(server: Server) -> str:
    key = server.keys()["inference"]
    return (
        f"curl -s -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        f'--data-binary \'{{"text": "It was a fantastic performance !"}}\' '
        f"{server.inference}/explanations/imdb_sentiment"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--workdir", default=str(REPO))
    p.add_argument("--config", default=str(REPO / "config.properties"))
    p.add_argument("--model-store", default=str(REPO / "model_store"))
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for a READY worker")
    a = p.parse_args(argv)
    workdir = Path(a.workdir).resolve()
    if a.action == "start":
        if _pid(workdir) and _alive(_pid(workdir)):
            sys.exit(f"TorchServe already runs (pid {_pid(workdir)}); `make stop` first")
        server = start(workdir, Path(a.config), Path(a.model_store), a.timeout)
        print(f"TorchServe is serving imdb_sentiment at {server.inference} (pid {server.pid}).")
        print(f"Logs: {workdir / 'logs'}; keys: {server.key_file}. Try:\n\n{curl_hint(server)}\n")
    elif a.action == "stop":
        stop(workdir)
        print("stopped")
    else:
        pid = _pid(workdir)
        print(f"running (pid {pid})" if pid and _alive(pid) else "not running")


if __name__ == "__main__":
    main()
