"""Build both Docker images from a local Debian base, run each, and check it against the same server run locally.

usage: python scripts/image_test.py [--servers torchserve,kserve] [--tag imdb-sentiment:image-test]
                                    [--workdir build/image-test] [--rootfs build/rootfs-bookworm] [--timeout 900]

No registry is reachable here, so the base image is made with ``debootstrap --variant=minbase
bookworm`` and ``docker import`` (both cached under build/). The script starts its own dockerd
(overlay2, its own data root, socket and pid file), builds the Dockerfile once per server
(``--build-arg SERVER=torchserve``: TAG; ``SERVER=kserve``: TAG-kserve) with this machine's CA
bundle, a pip.conf and the local CPU torch wheel in a builder-only folder (build/image-env), and
starts each image read-only as user 1000 with a published port. It checks:

* the kubelet's probes: TorchServe's GET /ping without any token answers 200 Healthy; the KServe
  server's /v2/health/ready and /v2/health/live answer 200;
* TorchServe's image: a prediction and an explanation equal the same requests against a local
  TorchServe started like ``make serve`` (its own working directory and free ports), and KServe v1/v2
  answer too;
* the KServe server's image: /predictions, /explanations, v1 :predict and :explain and v2 infer equal
  the same requests against ``python -m kserve_server`` run here, and its /predictions and
  /explanations equal the local TorchServe's (within 1e-6);
* the processes run as uid 1000, the root filesystem and the model store are read-only;
* none of the builder-only files (CA bundle, pip.conf, wheels) is in the final image or its history;
* a rolling restart's stop: the ServingRuntime's preStop hook run in the container, then SIGTERM as
  ``docker stop`` sends it; the container must exit by itself within the InferenceService's
  terminationGracePeriodSeconds (TorchServe's PID 1 ignores SIGTERM: checked, and the hook stops it).

Whatever happens it then removes the containers, stops the local servers and the daemon by pid, and
undoes what the daemon changed on this host (ip_forward, its iptables rules and chains, docker0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from imdb_ops import serve

REPO = Path(__file__).resolve().parent.parent


MODEL = "imdb_sentiment"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
REVIEW = "It was a fantastic performance ! The acting was superb, but the ending was horrible."
DEPLOY = REPO / "deploy" / "kserve"


@dataclass(frozen=True)
class Image:
    server: str  # the Dockerfile's SERVER
    tag: str
    ready: str  # the readiness probe's path
    runtime: str  # its ServingRuntime (args, preStop hook) and InferenceService (grace period)
    isvc: str
    processes: int  # at least this many processes in a serving container

    def manifest(self, name: str) -> dict:
        return next(d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d)

    def prestop(self) -> list[str]:
        (container,) = self.manifest(self.runtime)["spec"]["containers"]
        return container["lifecycle"]["preStop"]["exec"]["command"]

    def grace(self) -> float:
        return float(self.manifest(self.isvc)["spec"]["predictor"]["terminationGracePeriodSeconds"])


def images(tag: str, servers: list[str]) -> list[Image]:
    known = {
        "torchserve": Image("torchserve", tag, "/ping", "servingruntime.yaml", "inferenceservice-cpu.yaml", 2),
        "kserve": Image(
            "kserve",
            f"{tag}-kserve",
            "/v2/health/ready",
            "servingruntime-kserve.yaml",
            "inferenceservice-kserve.yaml",
            1,
        ),
    }
    unknown = set(servers) - set(known)
    if unknown:
        sys.exit(f"unknown servers {sorted(unknown)}: torchserve, kserve")
    return [known[s] for s in servers]


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=kw.pop("capture_output", True), **kw)


# ---------------------------------------------------------------- the daemon and what it changes


class HostState:
    """What dockerd changes on the host, recorded before it starts, so that it can be undone."""

    TABLES = ("filter", "nat")

    def __init__(self) -> None:
        self.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self.rules = {t: self._rules(t) for t in self.TABLES}
        self.had_bridge = Path("/sys/class/net/docker0").exists()

    @staticmethod
    def _rules(table: str) -> list[str]:
        return sh("iptables", "-t", table, "-S").stdout.splitlines()

    def restore(self) -> list[str]:
        """Delete the rules and chains that appeared since, reset changed chain policies (dockerd sets
        FORWARD to DROP), delete the bridge and reset ip_forward; then check that nothing differs."""
        done = [self._restore_table(table) for table in self.TABLES]
        if self._new_bridge():
            subprocess.run(["ip", "link", "delete", "docker0"], check=False)
            done.append("docker0 deleted")
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward + "\n")
        done.append(f"ip_forward={self.ip_forward}")
        left = {t: self._added(t) for t in self.TABLES}
        if any(left.values()) or self._new_bridge():
            raise RuntimeError(f"the host still differs after dockerd: {left}")
        return done

    def _added(self, table: str) -> list[str]:
        """The lines of ``iptables -S`` for ``table`` that were not there before dockerd."""
        return [r for r in self._rules(table) if r not in self.rules[table]]

    def _new_bridge(self) -> bool:
        """docker0 is there now and was not before dockerd."""
        return not self.had_bridge and Path("/sys/class/net/docker0").exists()

    def _restore_table(self, table: str) -> str:
        """Undo dockerd's changes to one table: its rules (-A), then its chains (-N: flushed, deleted), then
        the policies (-P) that differ from the recorded ones. Each step is best-effort (restore checks after)."""
        added = self._added(table)
        for rule in (r for r in added if r.startswith("-A ")):
            self._iptables(table, "-D", *rule.split()[1:])
        for chain in (r.split()[1] for r in added if r.startswith("-N ")):
            self._iptables(table, "-F", chain)
            self._iptables(table, "-X", chain)
        self._reset_policies(table)
        return f"iptables {table}: {len(added)} rules/chains/policies undone"

    def _reset_policies(self, table: str) -> None:
        """Set back each recorded chain policy that is no longer in force (the table is listed anew for each)."""
        for policy in (r for r in self.rules[table] if r.startswith("-P ") and r not in self._rules(table)):
            self._iptables(table, *policy.split())

    @staticmethod
    def _iptables(table: str, *args: str) -> None:
        subprocess.run(["iptables", "-t", table, *args], check=False)


@contextmanager
def dockerd(state: Path):
    """A private dockerd (overlay2) on its own socket; stopped by pid, host changes undone."""
    state.mkdir(parents=True, exist_ok=True)
    exec_root = Path(tempfile.mkdtemp(prefix="imdb-dockerd-"))  # socket paths must stay short
    sock = state / "docker.sock"
    host = HostState()
    log = open(state / "dockerd.log", "ab")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--storage-driver=overlay2",
            f"--data-root={state / 'data'}",
            f"--exec-root={exec_root}",
            f"--pidfile={state / 'dockerd.pid'}",
            f"-H=unix://{sock}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}", DOCKER_BUILDKIT="0")
    try:
        deadline = time.time() + 60
        while subprocess.run(["docker", "info"], env=env, capture_output=True).returncode != 0:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"dockerd did not start; see {state / 'dockerd.log'}")
            time.sleep(1)
        yield env
    finally:
        children = serve.children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in children:  # containerd and shims, if the daemon left any behind
            serve._signal(pid, signal.SIGKILL)
        print(f"dockerd stopped (pid {proc.pid}); host: {'; '.join(host.restore())}")
        shutil.rmtree(exec_root, ignore_errors=True)
        log.close()


# ---------------------------------------------------------------- base image, build environment, build


def base_image(env: dict, rootfs: Path, name: str = "imdb-base:bookworm") -> str:
    """Debian bookworm minbase as an image: debootstrap once, docker import once per data root."""
    if subprocess.run(["docker", "image", "inspect", name], env=env, capture_output=True).returncode == 0:
        return name
    if not (rootfs / "usr" / "bin" / "apt-get").exists():
        sh("debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    sh("docker", "import", "-", name, env=env, stdin=tar.stdout)
    tar.wait()
    return name


def build_env(folder: Path) -> Path:
    """Builder-only files: this machine's CA bundle, a pip.conf that trusts it, the local torch wheel."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "wheels").mkdir(parents=True)
    shutil.copyfile(HOST_CA, folder / "ca.crt")
    (folder / "pip.conf").write_text("[global]\ncert = /build-env/ca.crt\ndefault-timeout = 180\n")
    wheel_dirs = [Path(p) for p in os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()]
    for wheel in (w for d in wheel_dirs if d.is_dir() for w in d.glob("torch-*+cpu-cp311-*.whl")):
        try:
            os.link(wheel, folder / "wheels" / wheel.name)
        except OSError:
            shutil.copyfile(wheel, folder / "wheels" / wheel.name)
    return folder


def build(env: dict, image: Image, base: str, env_folder: Path) -> float:
    t0 = time.time()
    subprocess.run(
        [
            "docker",
            "build",
            "-t",
            image.tag,
            "--build-arg",
            f"SERVER={image.server}",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            f"BUILD_ENV={env_folder.relative_to(REPO)}",
            # The CPU wheel lies in BUILD_ENV/wheels; PyPI (through the CA) has the rest.
            "--build-arg",
            "TORCH_INDEX_URL=https://pypi.org/simple",
            str(REPO),
        ],
        env=env,
        check=True,
    )
    return time.time() - t0


# ---------------------------------------------------------------- checks


def request(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_ready(url: str, path: str, timeout: float) -> float:
    """Poll ``path`` without a token, as the kubelet does, until 200 (Healthy / ready); seconds waited."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            status, body = request(url + path)
            if status == 200 and (body.get("status") == "Healthy" or body.get("ready") is True):
                return time.time() - t0
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(2)
    raise RuntimeError(f"{url}{path} never answered 200 in {timeout}s")


def close(a, b, tol: float = 1e-6) -> bool:
    """Equal structure and values, floats within ``tol`` (relative above 1)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return _close_dicts(a, b, tol)
    if isinstance(a, list) and isinstance(b, list):
        return _close_lists(a, b, tol)
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= tol * max(1.0, abs(a))
    return a == b


def _close_dicts(a: dict, b: dict, tol: float) -> bool:
    return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)


def _close_lists(a: list, b: list, tol: float) -> bool:
    return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))


def compare_with_local(container_url: str, local: serve.Server) -> list[str]:
    """The same prediction and explanation from the container and from the local server."""
    token = local.keys()["inference"]
    checked = []
    for kind in ("predictions", "explanations"):
        path = f"/{kind}/{MODEL}"
        got = request(container_url + path, {"text": REVIEW})
        want = request(local.inference + path, {"text": REVIEW}, token)
        if got[0] != 200 or not close(got[1], want[1]):
            raise AssertionError(f"{kind}: container {got} != local {want}")
        checked.append(f"{kind} equal ({got[1]['label']}, logit {got[1]['logit']:.6f})")
    v1 = request(f"{container_url}/v1/models/{MODEL}:explain", {"instances": [{"text": REVIEW}]})
    inputs = [{"name": "reviews", "shape": [1], "datatype": "BYTES", "data": [REVIEW]}]
    v2 = request(f"{container_url}/v2/models/{MODEL}/infer", {"id": "1", "inputs": inputs})
    want = request(local.inference + f"/explanations/{MODEL}", {"text": REVIEW}, token)[1]
    if v1[0] != 200 or not close(v1[1]["explanations"][0], want):
        raise AssertionError(f"KServe v1 :explain differs: {v1}")
    if v2[0] != 200 or json.loads(v2[1]["outputs"][0]["data"][0])["label"] != want["label"]:
        raise AssertionError(f"KServe v2 infer: {v2}")
    return checked + ["KServe v1 :explain equal, v2 infer answered"]


def compare_kserve(container_url: str, local_url: str, torchserve: serve.Server) -> list[str]:
    """The KServe server's image against ``python -m kserve_server`` run here (every route) and against
    the local TorchServe (TorchServe's routes): a client moves between them by changing the port."""
    for probe in ("/v2/health/ready", "/v2/health/live"):
        status, body = request(container_url + probe)
        if status != 200:
            raise AssertionError(f"{probe}: {status} {body}")
    inputs = [{"name": "reviews", "shape": [1], "datatype": "BYTES", "data": [REVIEW]}]
    calls = {
        "/predictions": (f"/predictions/{MODEL}", {"text": REVIEW}),
        "/explanations": (f"/explanations/{MODEL}", {"text": REVIEW}),
        "v1 :predict": (f"/v1/models/{MODEL}:predict", {"instances": [{"text": REVIEW}]}),
        "v1 :explain": (f"/v1/models/{MODEL}:explain", {"instances": [{"text": REVIEW}]}),
        "v2 infer": (f"/v2/models/{MODEL}/infer", {"id": "1", "inputs": inputs}),
    }
    for name, (path, body) in calls.items():
        got, want = request(container_url + path, body), request(local_url + path, body)
        if got[0] != 200 or not close(got[1], want[1]):
            raise AssertionError(f"{name}: container {got} != local kserve_server {want}")
    token = torchserve.keys()["inference"]
    for kind in ("predictions", "explanations"):
        got = request(f"{container_url}/{kind}/{MODEL}", {"text": REVIEW})
        want = request(f"{torchserve.inference}/{kind}/{MODEL}", {"text": REVIEW}, token)
        if not close(got[1], want[1]):
            raise AssertionError(f"{kind}: container {got} != local TorchServe {want}")
    return [
        "/v2/health/ready and /v2/health/live 200",
        f"{', '.join(calls)} equal to the local kserve_server's",
        "/predictions and /explanations equal to the local TorchServe's (1e-6)",
    ]


def check_user_and_read_only(env: dict, name: str, image: Image) -> list[str]:
    def ex(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "exec", name, *cmd], env=env, capture_output=True, text=True)

    top = sh("docker", "top", name, "-eo", "pid,uid,comm", env=env).stdout.splitlines()[1:]  # the host's ps
    uids = {line.split()[1] for line in top}
    if uids != {"1000"} or len(top) < image.processes:  # TorchServe: the JVM and at least one Python worker
        raise AssertionError(f"processes run as uids {uids}, not 1000 only ({len(top)} processes)")
    inspect = json.loads(sh("docker", "inspect", name, env=env).stdout)[0]
    if not inspect["HostConfig"]["ReadonlyRootfs"]:
        raise AssertionError("the root filesystem is writable")
    for target in ("/mnt/models/model-store/probe", "/mnt/models/config/probe", "/opt/venv/probe"):
        if ex("python3", "-c", f"open('{target}', 'w')").returncode == 0:
            raise AssertionError(f"{target} is writable")
    return ["processes run as uid 1000", "root filesystem, model store and venv read-only"]


def image_files(env: dict, tag: str) -> Iterator[tuple[str, bytes | None]]:
    """(path, content) of every entry of the image's filesystem; None for non-files and files over 4 MB."""
    cid = sh("docker", "create", tag, env=env).stdout.strip()
    try:
        export = subprocess.Popen(["docker", "export", cid], env=env, stdout=subprocess.PIPE)
        with tarfile.open(fileobj=export.stdout, mode="r|") as tar:
            for member in tar:
                small = member.isfile() and member.size <= 4 << 20
                yield member.name.removeprefix("./"), tar.extractfile(member).read() if small else None
        export.wait()
    finally:
        sh("docker", "rm", cid, env=env)


def certificates(pem: str) -> set[str]:
    """The first base64 line of each certificate of a PEM bundle: enough to recognise it anywhere."""
    return {body.split()[0] for body in re.findall(r"-----BEGIN CERTIFICATE-----\s+(.*?)-----END", pem, re.S)}


def builder_files_absent(env: dict, tag: str, env_folder: Path) -> list[str]:
    """No builder-only file in the image: no /build-env, no file equal to the CA bundle or pip.conf, no
    certificate of this machine's bundle that Debian's public set lacks in any PEM file, and nothing of
    them in the history."""
    history = sh("docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", tag, env=env).stdout
    if "build-env" in history or "ca.crt" in history:
        raise AssertionError(f"the image history mentions the build environment:\n{history}")
    secrets = {hashlib.sha256((env_folder / f).read_bytes()).hexdigest(): f for f in ("ca.crt", "pip.conf")}
    found, pem_files, files = scan_image(env, tag, secrets)
    own = host_only_certificates(pem_files)
    found += [name for name, data in pem_files.items() if any(c.encode() in data for c in own)]
    if found:
        raise AssertionError(f"builder-only files in the image: {found}")
    return [f"{files} files scanned: no build-env, CA bundle, pip.conf, nor any of the {len(own)} host-only CA certs"]


def scan_image(env: dict, tag: str, secrets: dict[str, str]) -> tuple[list[str], dict[str, bytes], int]:
    """One pass over the image's filesystem: (entries under build-env or with the content of a file of
    ``secrets`` (by sha256), the PEM files by name, the number of files read)."""
    found, pem_files, files = [], {}, 0
    for name, data in image_files(env, tag):
        if name.startswith("build-env"):
            found.append(name)
        if data is None:
            continue
        files += 1
        if hashlib.sha256(data).hexdigest() in secrets:
            found.append(name)
        if b"BEGIN CERTIFICATE" in data:
            pem_files[name] = data
    return found, pem_files, files


def host_only_certificates(pem_files: dict[str, bytes]) -> set[str]:
    """The certificates of this machine's CA bundle that are not public. Public: Debian's set, in the image
    (TorchServe's JRE pulls ca-certificates in) or on this host (the KServe image has no system bundle,
    only certifi's and grpc's copies of the same public roots)."""
    debian = pem_files.get("etc/ssl/certs/ca-certificates.crt", b"").decode()
    debian += "".join(c.read_text() for c in Path("/usr/share/ca-certificates/mozilla").glob("*.crt"))
    return certificates(HOST_CA.read_text()) - certificates(debian)


# ---------------------------------------------------------------- main


def run_container(env: dict, stack: ExitStack, image: Image, port: int) -> str:
    name = f"imdb-image-test-{image.server}-{os.getpid()}"
    sh(
        "docker", "run", "-d", "--name", name, "--read-only",
        "--tmpfs", "/tmp:rw,exec,size=256m",
        "--tmpfs", "/home/model-server:rw,size=64m,uid=1000,gid=1000",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-e", "TS_SERVICE_ENVELOPE=",  # what KServe renders for an InferenceService without the label
        "-p", f"127.0.0.1:{port}:8080",
        image.tag, env=env,
    )  # fmt: skip
    stack.callback(lambda: subprocess.run(["docker", "rm", "-f", name], env=env, capture_output=True))
    return name


def running(env: dict, name: str) -> bool:
    return sh("docker", "inspect", "-f", "{{.State.Running}}", name, env=env).stdout.strip() == "true"


def check_rolling_stop(env: dict, name: str, url: str, image: Image) -> list[str]:
    """The pod's deletion as the kubelet runs it: the preStop hook in the container, then SIGTERM to PID 1
    (``docker stop``, SIGKILL after what is left of the grace period). The container must exit by itself."""
    checked = []
    if image.server == "torchserve":  # the reason for its hook: a Python PID 1 without a handler
        sh("docker", "kill", "--signal", "TERM", name, env=env)
        time.sleep(3)
        if not running(env, name) or request(url + image.ready)[0] != 200:
            raise AssertionError("TorchServe's PID 1 was expected to ignore SIGTERM")
        checked.append("SIGTERM alone: ignored by PID 1 (the torchserve wrapper), /ping still 200 after 3 s")
    grace, t0 = image.grace(), time.time()
    hook = subprocess.run(["docker", "exec", name, *image.prestop()], env=env, capture_output=True, text=True)
    hook_s = time.time() - t0
    left = max(1, int(grace - hook_s))
    if running(env, name):
        sh("docker", "stop", "-t", str(left), name, env=env)
    stopped = time.time() - t0
    state = json.loads(sh("docker", "inspect", "-f", "{{json .State}}", name, env=env).stdout)
    if state["ExitCode"] not in (0, 143) or stopped >= grace:  # 137: killed at the end of the grace period
        raise AssertionError(f"stop: exit {state['ExitCode']} after {stopped:.1f} s (grace {grace:.0f} s); hook {hook}")
    return [
        *checked,
        f"preStop {image.prestop()} + SIGTERM: exited {state['ExitCode']} {stopped:.1f} s after the deletion (grace {grace:.0f} s)",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="torchserve,kserve", help="the images to build and check (comma-separated)")
    p.add_argument(
        "--tag", default="imdb-sentiment:image-test", help="TorchServe's tag; the KServe server's: TAG-kserve"
    )
    p.add_argument("--workdir", type=Path, default=REPO / "build" / "image-test")
    p.add_argument("--rootfs", type=Path, default=REPO / "build" / "rootfs-bookworm")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for each server's readiness")
    a = p.parse_args(argv)
    mar = REPO / "model_store" / f"{MODEL}.mar"
    if not mar.exists():
        sys.exit(f"{mar} is missing: run `make mar` (make image-test does)")
    todo = images(a.tag, a.servers.split(","))
    # A background job ignores SIGINT: make SIGTERM unwind the stack too (containers, servers, dockerd).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("image-test: terminated"))
    t0 = time.time()
    with ExitStack() as stack:
        env = stack.enter_context(dockerd(a.workdir / "docker"))
        env_folder = build_env(REPO / "build" / "image-env")
        base = base_image(env, a.rootfs)
        local = local_server(stack, a.workdir / "local", mar, a.timeout)
        kserve_url = local_kserve(stack, mar, a.timeout) if any(i.server == "kserve" for i in todo) else None
        for image in todo:
            check_image(env, stack, image, base, env_folder, local, kserve_url, a.timeout)
    note(f"image-test passed in {time.time() - t0:.0f} s ({', '.join(i.server for i in todo)})")


def check_image(env, stack, image: Image, base: str, env_folder: Path, local, kserve_url, timeout: float) -> None:
    """Build ``image``, check its files, run it and check its answers, user, filesystem and stop."""
    tag = f"{image.server} ({image.tag})"
    note(f"{tag} build: {build(env, image, base, env_folder):.0f} s from {base}")
    size = json.loads(sh("docker", "image", "inspect", image.tag, env=env).stdout)[0]["Size"]
    note(f"{tag} image size: {size / 1e6:.0f} MB", *builder_files_absent(env, image.tag, env_folder))
    with ExitStack() as container:
        port = serve.free_port()
        name = run_container(env, container, image, port)
        url = f"http://127.0.0.1:{port}"
        note(f"{tag} {image.ready} 200 without a token after {wait_ready(url, image.ready, timeout):.0f} s")
        note(
            *(
                compare_with_local(url, local)
                if image.server == "torchserve"
                else compare_kserve(url, kserve_url, local)
            )
        )
        note(*check_user_and_read_only(env, name, image))
        memory = sh("docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name, env=env).stdout.strip()
        note(f"{tag} container memory after the requests: {memory}")
        note(*check_rolling_stop(env, name, url, image))


def note(*lines: str) -> None:
    print("image-test:", "\nimage-test: ".join(lines), flush=True)


def local_server(stack: ExitStack, workdir: Path, mar: Path, timeout: float) -> serve.Server:
    """``make serve``'s server (config.properties, token on) on free ports in its own directory."""
    shutil.rmtree(workdir, ignore_errors=True)
    store = workdir / "store"
    store.mkdir(parents=True)
    shutil.copyfile(mar, store / mar.name)
    config = serve.isolated_config(workdir / "config.properties")
    stack.callback(serve.stop, workdir / "work")
    return serve.start(workdir / "work", config, store, timeout)


def local_kserve(stack: ExitStack, mar: Path, timeout: float) -> str:
    """``python -m kserve_server`` from this checkout on a free loopback port, stopped by pid."""
    port = serve.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kserve_server", "--model", str(mar), "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        try:
            if request(url + "/v2/health/ready")[0] == 200:
                return url
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(1)
    raise RuntimeError(f"the local kserve_server never became ready (exit {proc.poll()})")


if __name__ == "__main__":
    main()
