"""What in-flight, queued and newly routed requests get when a serving pod is terminated under load.

usage: python scripts/drain.py {torchserve,kserve} [--clients 8] [--load 5] [--route 3]
                               [--prestop shipped|none|'CMD'] [--grace SECONDS]

The server is started exactly as the shipped ServingRuntime starts it (deploy/kserve/servingruntime.yaml
for TorchServe, servingruntime-kserve.yaml for the KServe server: its args, the cluster configuration, the
storage layout under a temporary /mnt/models, free loopback ports) and, when run as root, as PID 1 of its
own PID namespace (``unshare --pid --fork --mount-proc``), as in a container: there the kernel delivers
SIGTERM only to a process that handles it. ``--clients`` threads then send explanations without pause
over keep-alive connections (an ingress's upstream pool), and the kubelet's deletion is replayed:

  t=0 (after ``--load`` s)  the pod is deleted: its endpoint turns not-ready; the clients keep sending for
                            ``--route`` s (the time the load balancers take to stop routing to it)
  then                      the preStop hook runs inside the pod's namespaces (``--prestop``: the
                            shipped ServingRuntime's, ``none`` as before issue 20, or a shell command)
  after the hook            SIGTERM to PID 1
  t=``--grace``             SIGKILL if the server still runs (terminationGracePeriodSeconds; default:
                            the shipped InferenceService's)

Every request is recorded (start, end, outcome) and counted by when it was sent and how it ended:
answered (200), http_<code>, refused (connection refused), reset (connection reset or closed
before the answer), timeout; a client whose request failed sends the next one 50 ms later, so
"refused" counts attempts. Output: one JSON document (stdout): the groups, ``lost`` (every request
not answered), when the server exited and whether the grace period's SIGKILL ended it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imdb_ops.serve import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "kserve"
MODEL = "imdb_sentiment"
MAR = REPO / "model_store" / f"{MODEL}.mar"
RUNTIMES = {"torchserve": "servingruntime.yaml", "kserve": "servingruntime-kserve.yaml"}
SERVICES = {"torchserve": "inferenceservice-cpu.yaml", "kserve": "inferenceservice-kserve.yaml"}
SENTENCES = (
    "A beautiful, moving film with brilliant performances.",
    "I loved every minute of it, and the score is wonderful.",
    "Boring, predictable and far too long.",
    "The plot made no sense and the dialogue was painful.",
    "It was a fantastic performance !",
    "One of the worst films I have ever seen.",
    "The camera work is clever but the ending falls flat.",
    "My whole family enjoyed it, even the kids.",
)


def reviews(n: int = 16, seed: int = 0) -> list[str]:
    """Reviews of 120-320 words (IMDB's median is about 170)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(SENTENCES) for _ in range(rng.randint(15, 40))) for _ in range(n)]


def manifest(name: str) -> dict:
    return next(d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d)


def container(server: str) -> dict:
    (c,) = manifest(RUNTIMES[server])["spec"]["containers"]
    return c


def shipped_grace(server: str) -> float:
    return float(manifest(SERVICES[server])["spec"]["predictor"].get("terminationGracePeriodSeconds", 30))


def shipped_prestop(server: str) -> list[str] | None:
    return container(server).get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")


# ---------------------------------------------------------------- the pod


@dataclass
class Pod:
    proc: subprocess.Popen  # unshare (or the server itself without root)
    url: str
    env: dict
    log: Path
    pid1: int  # the server's pid (PID 1 of its namespace) as this namespace sees it

    def alive(self) -> bool:
        return self.proc.poll() is None


def layout(root: Path) -> Path:
    """/mnt/models as KServe's storage initializer leaves it (config/ and model-store/)."""
    models = root / "mnt" / "models"
    (models / "config").mkdir(parents=True)
    (models / "model-store").mkdir()
    shutil.copy(REPO / "deploy" / "storage" / "config" / "config.properties", models / "config")
    shutil.copy(REPO / "metrics.yaml", models / "config")
    if MAR.exists():
        shutil.copy(MAR, models / "model-store")
    else:  # a fresh clone before `make mar`: the shipped model archived here
        from imdb_ops.build_mar import build

        build(REPO / "model_store" / "artifacts", models / "model-store")
    return models


def pod_env(server: str, models: Path, home: Path, port: int) -> dict:
    env = dict(os.environ, HOME=str(home), TEMP=str(home / "tmp"), TMPDIR=str(home / "tmp"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update({e["name"]: "" for e in container(server).get("env", [])})  # KServe renders unset labels as ""
    if server == "torchserve":  # enable_envvars_config: free ports instead of 8080-8082, 7070-7071, 9000
        env.update({f"TS_{api}_ADDRESS": f"http://127.0.0.1:{free_port()}" for api in ("MANAGEMENT", "METRICS")})
        env.update(TS_INFERENCE_ADDRESS=f"http://127.0.0.1:{port}", TS_INITIAL_WORKER_PORT=str(free_port()))
        env.update(TS_GRPC_INFERENCE_PORT=str(free_port()), TS_GRPC_MANAGEMENT_PORT=str(free_port()))
        env.update(TS_METRICS_CONFIG=str(models / "config" / "metrics.yaml"))
    return env


def pod_args(server: str, models: Path, port: int, path: str) -> list[str]:
    """The ServingRuntime's args with /mnt/models moved, and the KServe server on loopback and ``port``."""
    args = [a.replace("/mnt/models", str(models)) for a in container(server)["args"]]
    if server == "kserve":
        args = [{"0.0.0.0": "127.0.0.1", "8080": str(port)}.get(a, a) for a in args]
    return [shutil.which(args[0], path=path) or args[0], *args[1:]]


def start(server: str, root: Path, timeout: float = 300) -> Pod:
    models, home, port = layout(root), root / "home", free_port()
    (home / "tmp").mkdir(parents=True)
    env = pod_env(server, models, home, port)
    pid_ns = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"] if os.geteuid() == 0 else []
    log = root / "server.log"
    with open(log, "wb") as out:
        args = [*pid_ns, *pod_args(server, models, port, env["PATH"])]
        proc = subprocess.Popen(args, cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pod = Pod(proc, f"http://127.0.0.1:{port}", env, log, proc.pid)
    deadline = time.time() + timeout
    while time.time() < deadline and pod.alive():
        if serves(pod.url):
            pod.pid1 = child(proc.pid) if pid_ns else proc.pid
            return pod
        time.sleep(0.5)
    stop(pod)
    raise RuntimeError(f"{server} never became ready:\n{log.read_text(errors='replace')[-3000:]}")


def serves(url: str) -> bool:
    """A prediction answered: TorchServe's /ping says Healthy before its worker has loaded."""
    request = urllib.request.Request(f"{url}/predictions/{MODEL}", b"great movie", {"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def child(pid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def stop(pod: Pod) -> None:
    """SIGKILL, as the kubelet at the end of the grace period: PID 1 (its death ends the namespace) and the
    process group (the server's own processes where there is no namespace)."""
    for kill in (lambda: os.kill(pod.pid1, signal.SIGKILL), lambda: os.killpg(pod.proc.pid, signal.SIGKILL)):
        # pid1 and the group are this pod's own (start_new_session): never 0, never ours
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
    pod.proc.wait()


def run_hook(pod: Pod, command: list[str], timeout: float) -> float:
    """The preStop exec hook, inside the pod's PID and mount namespaces (its /proc), as the kubelet runs it."""
    ns = ["nsenter", f"--target={pod.pid1}", "--pid", "--mount"] if pod.pid1 != pod.proc.pid else []
    t0 = time.time()
    try:
        subprocess.run([*ns, *command], env=pod.env, cwd=pod.env["HOME"], timeout=timeout, capture_output=True)
    except subprocess.TimeoutExpired:
        pass
    return time.time() - t0


# ---------------------------------------------------------------- the clients


@dataclass
class Load:
    url: str
    texts: list[str]
    route: float  # seconds the load balancer keeps routing to the pod after its deletion
    route_until: float = float("inf")  # no new request starts after this
    records: list[tuple[float, float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, k: int) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        conn, n = None, k
        while time.time() < self.route_until:
            body = json.dumps({"text": self.texts[n % len(self.texts)]})
            n += 1
            t0 = time.time()
            try:
                conn = conn or http.client.HTTPConnection(host, int(port), timeout=120)
                conn.request("POST", f"/explanations/{MODEL}", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                outcome = "answered" if r.status == 200 else f"http_{r.status}"
            except OSError as err:  # refused, reset, timeout, closed
                outcome, conn = classify(err), None
                time.sleep(0.05)  # a client that failed tries again, not in a hot loop
            except http.client.HTTPException:  # RemoteDisconnected is an OSError too; BadStatusLine is not
                outcome, conn = "reset", None
            with self.lock:
                self.records.append((t0, time.time(), outcome))


def classify(err: OSError) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "refused"
    if isinstance(err, TimeoutError | socket.timeout):
        return "timeout"
    return "reset"


GROUPS = ("before_deletion", "after_deletion_before_sigterm", "in_flight_at_sigterm", "sent_after_sigterm")


def group_of(t0: float, t1: float, deleted: float, sigterm: float) -> str:
    """Which of the four disjoint GROUPS a request sent at ``t0`` and ended at ``t1`` belongs to."""
    if t0 < sigterm <= t1:
        return "in_flight_at_sigterm"
    if t0 >= sigterm:
        return "sent_after_sigterm"
    return "before_deletion" if t0 < deleted else "after_deletion_before_sigterm"


def summary(records: list[tuple[float, float, str]], deleted: float, sigterm: float) -> dict:
    """Counts of outcomes in four disjoint groups: sent before the deletion, sent in the routing window
    before SIGTERM, in flight at SIGTERM (sent before it, ended after), sent after SIGTERM. Where the
    hook stops the server itself (TorchServe's ``torchserve --stop``), the stop is its last step, within
    about 0.1 s of the SIGTERM."""
    groups: dict[str, list[str]] = {name: [] for name in GROUPS}
    for t0, t1, outcome in records:
        groups[group_of(t0, t1, deleted, sigterm)].append(outcome)
    out: dict = {name: dict(Counter(outcomes)) for name, outcomes in groups.items()}
    return {**out, **answer_totals(records, deleted, sigterm)}


def answer_totals(records: list[tuple[float, float, str]], deleted: float, sigterm: float) -> dict:
    """``lost`` (every request not answered), the answers that ended after the deletion, and how long
    after SIGTERM the last answer came (None when none came after it)."""
    answered_after = [t1 - sigterm for t0, t1, o in records if o == "answered" and t1 >= sigterm]
    return {
        "lost": sum(o != "answered" for _, _, o in records),
        "answered_after_deletion": sum(o == "answered" and t1 >= deleted for _, t1, o in records),
        "last_answer_after_sigterm_s": round(max(answered_after), 3) if answered_after else None,
    }


# ---------------------------------------------------------------- the run


def terminate(pod: Pod, load: Load, hook: list[str] | None, grace: float) -> dict:
    """Replay the pod's deletion: routing window, preStop hook, SIGTERM, SIGKILL at the grace period."""
    deleted = time.time()
    load.route_until = deleted + load.route
    hook_s = run_hook(pod, hook, grace) if hook else 0.0
    sigterm = time.time()
    if pod.alive():
        os.kill(pod.pid1, signal.SIGTERM)
    try:
        pod.proc.wait(timeout=max(0.0, deleted + grace - time.time()))
        killed = False
    except subprocess.TimeoutExpired:
        stop(pod)
        killed = True
    exited = time.time()
    return {
        "deleted": deleted,
        "sigterm": sigterm,
        "hook_s": round(hook_s, 3),
        "sigterm_to_exit_s": round(exited - sigterm, 3),
        "deletion_to_exit_s": round(exited - deleted, 3),
        "killed_at_grace": killed,
        "exit_code": pod.proc.returncode,
    }


def measure(a: argparse.Namespace) -> dict:
    hook = {"shipped": shipped_prestop(a.server), "none": None}.get(a.prestop, ["/bin/sh", "-c", a.prestop])
    grace = a.grace if a.grace is not None else shipped_grace(a.server)
    root = Path(tempfile.mkdtemp(prefix="imdb-drain-"))
    try:
        pod = start(a.server, root)
        load = Load(pod.url, reviews(), a.route)
        threads = [threading.Thread(target=load.client, args=(k,), daemon=True) for k in range(a.clients)]
        for t in threads:
            t.start()
        time.sleep(a.load)
        times = terminate(pod, load, hook, grace)
        for t in threads:
            t.join(timeout=150)
        counts = summary(load.records, times.pop("deleted"), times.pop("sigterm"))
        config = {"server": a.server, "clients": a.clients, "load_s": a.load, "route_s": a.route}
        config.update(prestop=hook, grace_s=grace, pid1=pod.pid1 != pod.proc.pid)
        return {**config, **times, **counts}
    finally:
        if "pod" in locals():
            stop(pod)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("server", choices=sorted(RUNTIMES))
    p.add_argument("--clients", type=int, default=8, help="concurrent clients sending explanations")
    p.add_argument("--load", type=float, default=5, help="seconds of load before the deletion")
    p.add_argument("--route", type=float, default=3, help="seconds the clients keep sending after the deletion")
    p.add_argument("--prestop", default="shipped", help="shipped (the ServingRuntime's) | none | a shell command")
    p.add_argument("--grace", type=float, help="terminationGracePeriodSeconds (default: the shipped one)")
    a = p.parse_args(argv)
    print(json.dumps(measure(a), indent=2))


if __name__ == "__main__":
    main()
