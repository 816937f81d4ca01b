"""Deployment (issues 9, 17, 20): the Dockerfile lint, the manifests against KServe's and Kubernetes'
schemas, TorchServe and the KServe server started exactly as their ServingRuntimes start them,
answering KServe v1/v2 and the probes, and a rolling restart replayed under load (scripts/drain.py)
with the shipped preStop hooks and grace periods: no request lost.

The images themselves are checked by ``make image-test`` (scripts/image_test.py): minutes, not for every run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from functools import partial
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml

from imdb_ops import build_mar, drain, serve
from tests.helpers import REPO, SHIPPED

DEPLOY = REPO / "deploy"
CRD_SCHEMA = REPO.parent / "shared" / "kserve" / "inferenceservice-v1beta1.schema.json.gz"
K8S_VERSION = "1.30"
MODEL = "imdb_sentiment"
TEXTS = ["It was a fantastic performance !", "Best film ever", "It was a horrible movie", "Such a great show!"]


def manifests(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ServingRuntime name -> its file; InferenceService files (each with its PodDisruptionBudget).
RUNTIMES = {"imdb-sentiment-torchserve": "servingruntime.yaml", "imdb-sentiment-kserve": "servingruntime-kserve.yaml"}
SERVICES = ["inferenceservice-cpu.yaml", "inferenceservice-gpu.yaml", "inferenceservice-kserve.yaml"]
# Seconds from the stop to the exit, measured with scripts/drain.py (docs/deploy.md, "Rolling restarts"):
# TorchServe's JVM after `torchserve --stop` (2.5-2.8 s); the KServe server's upper bound is its own --grace.
JVM_EXIT_S = 3.0


def of_kind(path: Path, kind: str) -> list[dict]:
    return [doc for doc in manifests(path) if doc["kind"] == kind]


def inferenceservice(name: str) -> dict:
    (isvc,) = of_kind(DEPLOY / "kserve" / name, "InferenceService")
    return isvc


def serving_runtime(name: str = "imdb-sentiment-torchserve") -> dict:
    (runtime,) = manifests(DEPLOY / "kserve" / RUNTIMES[name])
    assert runtime["metadata"]["name"] == name
    return runtime


def runtime_container(name: str = "imdb-sentiment-torchserve") -> dict:
    (container,) = serving_runtime(name)["spec"]["containers"]
    return container


def deployment() -> tuple[dict, dict]:
    """The plain Deployment and its one container."""
    (d,) = manifests(DEPLOY / "kubernetes" / "deployment.yaml")
    (container,) = d["spec"]["template"]["spec"]["containers"]
    return d, container


def dockerfile_cmds() -> dict[str, list[str]]:
    """The exec-form CMD of each stage of the Dockerfile, by stage name."""
    cmds, stage = {}, None
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if m := re.match(r"^FROM \S+(?: AS (\S+))?$", line):
            stage = m.group(1)
        elif m := re.match(r"^CMD (\[.*\])$", line):
            cmds[stage] = json.loads(m.group(1))
    return cmds


# ---------------------------------------------------------------- static checks


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    r = subprocess.run(
        [str(hadolint), "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not CRD_SCHEMA.exists(), reason="KServe's CRD schema is in ../shared/kserve")
@pytest.mark.parametrize("name", SERVICES)
def test_inferenceservice_matches_kserves_crd_schema(name: str) -> None:
    schema = json.loads(gzip.decompress(CRD_SCHEMA.read_bytes()))
    validator = jsonschema.Draft7Validator(schema)
    isvc = inferenceservice(name)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(isvc)]
    assert not errors, errors
    # The schema really constrains the predictor (a misspelled resources block, a grace period in words
    # are refused).
    for field, value in (("resources", [{"limits": "1Gi"}]), ("terminationGracePeriodSeconds", "20s")):
        broken = deepcopy(isvc)
        (broken["spec"]["predictor"]["model"] if field == "resources" else broken["spec"]["predictor"])[field] = value
        assert not validator.is_valid(broken), field
    model = isvc["spec"]["predictor"]["model"]
    runtime = serving_runtime(model["runtime"])["spec"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["protocolVersions"]


@pytest.mark.parametrize(
    "path",
    [
        *(
            f"kubernetes/{n}"
            for n in ("deployment.yaml", "service.yaml", "networkpolicy.yaml", "poddisruptionbudget.yaml")
        ),
        *(f"kserve/{n}" for n in SERVICES),  # their PodDisruptionBudgets
    ],
)
def test_kubernetes_objects_match_the_kubernetes_schemas(path: str) -> None:
    docs = [d for d in manifests(DEPLOY / path) if d["kind"] != "InferenceService"]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_the_serving_runtimes_container_is_a_valid_kubernetes_container(name: str) -> None:
    """ServingRuntime is a CRD without a schema here: its container and volumes are checked as a Pod's."""
    runtime = serving_runtime(name)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime"},
        "spec": {"containers": runtime["spec"]["containers"], "volumes": runtime["spec"]["volumes"]},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    broken = deepcopy(pod)  # the check has teeth: a preStop hook without a handler is refused
    broken["spec"]["containers"][0]["lifecycle"] = {"preStop": {"exec": "sleep 5"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_runtimes_deployment_and_images_start_their_servers_the_same_way() -> None:
    cmds = dockerfile_cmds()
    d, container = deployment()
    torchserve, kserve = runtime_container(), runtime_container("imdb-sentiment-kserve")
    assert cmds["runtime-torchserve"] == torchserve["args"] == container["args"]
    assert cmds["runtime-kserve"] == kserve["args"]
    assert re.search(r"^ARG SERVER=torchserve$", (REPO / "Dockerfile").read_text(), re.M)  # unchanged by default
    for c in (torchserve, kserve, container):
        security = {**d["spec"]["template"]["spec"]["securityContext"], **c["securityContext"]}
        assert security["runAsUser"] == 1000 and security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
        assert security["capabilities"] == {"drop": ["ALL"]} and not security["allowPrivilegeEscalation"]


def test_the_kserve_runtime_serves_http_on_8080_with_kserves_health_probes() -> None:
    c = runtime_container("imdb-sentiment-kserve")
    assert [(p["containerPort"], p["protocol"]) for p in c["ports"]] == [(8080, "TCP")]
    assert c["args"][c["args"].index("--port") + 1] == "8080" and "--grpc" not in " ".join(c["args"])
    probes = {
        kind: (c[kind]["httpGet"]["path"], c[kind]["httpGet"]["port"]) for kind in ("readinessProbe", "livenessProbe")
    }
    assert probes == {"readinessProbe": ("/v2/health/ready", 8080), "livenessProbe": ("/v2/health/live", 8080)}
    assert c["startupProbe"]["httpGet"]["port"] == 8080
    assert serving_runtime("imdb-sentiment-kserve")["spec"]["annotations"]["prometheus.kserve.io/port"] == "8080"
    assert (
        c["resources"] == runtime_container()["resources"] and c["volumeMounts"] == runtime_container()["volumeMounts"]
    )


def test_the_network_policies_fence_the_kserve_server_as_the_torchserve_pods() -> None:
    fence, metrics = manifests(DEPLOY / "kubernetes" / "networkpolicy.yaml")
    isvc = inferenceservice("inferenceservice-kserve.yaml")
    assert fence["spec"]["podSelector"]["matchLabels"].items() <= isvc["metadata"]["labels"].items()
    assert metrics["spec"]["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"]
    }
    (rule,) = metrics["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert [f["namespaceSelector"]["matchLabels"] for f in rule["from"]] == [
        {"kubernetes.io/metadata.name": "monitoring"}
    ]


def prestop_sleep(container: dict) -> float:
    """Seconds of the container's preStop delay (``sleep N`` in its exec hook)."""
    command = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    return float(re.search(r"\bsleep (\d+)", command).group(1))


def pods() -> list[tuple[str, int, dict, dict, dict]]:
    """(name, replicas, pod spec, container, PodDisruptionBudget) of every shipped workload: each
    InferenceService with its runtime's container, and the plain Deployment."""
    found = []
    for name in SERVICES:
        isvc = inferenceservice(name)
        predictor = isvc["spec"]["predictor"]
        (pdb,) = of_kind(DEPLOY / "kserve" / name, "PodDisruptionBudget")
        assert pdb["spec"]["selector"] == {
            "matchLabels": {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
        }
        container = runtime_container(predictor["model"]["runtime"])
        found.append((name, predictor["minReplicas"], predictor, container, pdb))
        assert predictor["deploymentStrategy"]["rollingUpdate"]["maxUnavailable"] == 0
    d, container = deployment()
    (pdb,) = manifests(DEPLOY / "kubernetes" / "poddisruptionbudget.yaml")
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert all(
        e["operator"] == "DoesNotExist" and e["key"] not in labels for e in pdb["spec"]["selector"]["matchExpressions"]
    )
    assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    return [*found, ("deployment.yaml", d["spec"]["replicas"], d["spec"]["template"]["spec"], container, pdb)]


@pytest.mark.parametrize("index", range(len(SERVICES) + 1))
def test_every_workload_survives_one_pods_death_and_rolls_without_losing_requests(index: int) -> None:
    """Issue 20: two replicas at least and a budget that keeps one; a preStop delay before the stop; a
    grace period that covers the delay plus the measured drain (the KServe server's own --grace)."""
    name, replicas, spec, container, pdb = pods()[index]
    assert replicas >= 2 and pdb["spec"]["minAvailable"] == 1, name
    delay, grace = prestop_sleep(container), spec["terminationGracePeriodSeconds"]
    assert delay >= 5, name
    if "kserve_server" in container["args"]:
        drain = float(container["args"][container["args"].index("--grace") + 1])
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(int(delay))]
    else:  # the kubelet's SIGTERM does not reach TorchServe (PID 1 ignores it): the hook stops it
        drain = JVM_EXIT_S
        assert re.search(r"sleep \d+ && torchserve --stop$", container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert delay + drain < grace <= 2 * (delay + drain) + 5, (name, delay, drain, grace)


def test_model_snapshot_carries_the_archives_worker_and_batch_settings() -> None:
    """TorchServe uses the snapshot's values, not the archive's: they must not drift apart."""
    props = (DEPLOY / "storage" / "config" / "config.properties").read_text()
    snapshot = json.loads(re.search(r"^model_snapshot=(.*)$", props, re.M).group(1))
    (entry,) = snapshot["models"][MODEL].values()
    archive = yaml.safe_load((REPO / "model-config.yaml").read_text())
    keys = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")
    assert {k: entry[k] for k in keys} == {k: archive[k] for k in keys}
    assert entry["marName"] == f"{MODEL}.mar" and snapshot["modelCount"] == len(snapshot["models"]) == 1


def test_a_batch_delay_torchserve_would_read_as_100_ms_is_refused_at_build(tmp_path: Path) -> None:
    """maxBatchDelay 0 looks like "no wait"; TorchServe 0.12 takes it as unset (100 ms a batch)."""
    with pytest.raises(ValueError, match="waits 100 ms per batch"):
        build_mar.build(SHIPPED, tmp_path, maxBatchDelay=0)
    assert not list(tmp_path.iterdir())
    build_mar.check_batching({"batchSize": 1, "maxBatchDelay": 0})  # no batch to wait for: no wait
    build_mar.check_batching(yaml.safe_load((REPO / "model-config.yaml").read_text()))


# ---------------------------------------------------------------- TorchServe as the runtime starts it


def storage_layout(root: Path) -> Path:
    """/mnt/models as KServe's storage initializer leaves it: config/ (config.properties, metrics.yaml,
    log4j2.xml) and model-store/, read-only."""
    models = root / "mnt" / "models"
    (models / "config").mkdir(parents=True)
    shutil.copy(DEPLOY / "storage" / "config" / "config.properties", models / "config")
    shutil.copy(REPO / "metrics.yaml", models / "config")
    shutil.copy(REPO / "log4j2.xml", models / "config")
    build_mar.build(SHIPPED, models / "model-store")
    for path in [models, *models.rglob("*")]:
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (0o111 if path.is_dir() else 0))
    return models


def runtime_env(models: Path, home: Path) -> tuple[dict, dict]:
    """The runtime's environment plus, through enable_envvars_config, free ports and this layout's path."""
    ports = {"inference": serve.free_port(), "management": serve.free_port(), "metrics": serve.free_port()}
    env = dict(os.environ, HOME=str(home), TMPDIR=str(home / "tmp"), TEMP=str(home / "tmp"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(rendered_runtime_env())
    env.update({f"TS_{api.upper()}_ADDRESS": f"http://127.0.0.1:{port}" for api, port in ports.items()})
    env.update(
        TS_GRPC_INFERENCE_PORT=str(serve.free_port()),
        TS_GRPC_MANAGEMENT_PORT=str(serve.free_port()),
        TS_INITIAL_WORKER_PORT=str(serve.free_port()),
        TS_METRICS_CONFIG=str(models / "config" / "metrics.yaml"),
    )
    return env, ports


def rendered_runtime_env(isvc: str = "inferenceservice-cpu.yaml") -> dict[str, str]:
    """The runtime's env as KServe renders it for this InferenceService: "{{.Labels.x}}" becomes the
    label's value, or "" without it (a map[string]string in Go's templates)."""
    labels = inferenceservice(isvc)["metadata"].get("labels", {})
    render = partial(re.sub, r"\{\{\s*\.Labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""))
    return {e["name"]: render(e["value"]) for e in runtime_container()["env"]}


def runtime_args(models: Path) -> list[str]:
    """The ServingRuntime's args with /mnt/models moved to ``models``."""
    args = [a.replace("/mnt/models", str(models)) for a in runtime_container()["args"]]
    return [str(Path(sys.executable).with_name(args[0])), *args[1:]]


def as_non_root() -> dict:
    """Run as uid/gid 1000 like the runtime's securityContext when the tests run as root and that user
    can run this venv's Python (a venv over an interpreter under /root cannot: then root, read-only store)."""
    user = {"user": 1000, "group": 1000, "extra_groups": []}
    if os.geteuid() != 0:
        return {}
    try:
        subprocess.run([sys.executable, "-c", "import torch"], check=True, capture_output=True, **user)
    except (OSError, subprocess.CalledProcessError):
        return {}
    return user


@pytest.fixture(scope="module")
def runtime() -> Iterator[dict[str, str]]:
    # Not under pytest's tmp_path: its root is private to root, and the server runs as uid 1000.
    root = Path(tempfile.mkdtemp(prefix="imdb-runtime-"))
    root.chmod(0o755)
    models = storage_layout(root)
    home = root / "home"  # the runtime's writable emptyDir volumes: working directory and TEMP
    (home / "tmp").mkdir(parents=True)
    if os.geteuid() == 0:
        for path in (home, home / "tmp"):
            os.chown(path, 1000, 1000)
    env, ports = runtime_env(models, home)
    log = open(root / "torchserve.out", "wb")
    proc = subprocess.Popen(
        runtime_args(models), cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, **as_non_root()
    )
    urls = {api: f"http://127.0.0.1:{port}" for api, port in ports.items()}
    try:
        wait_ready(urls, proc, home)
        yield {**urls, "models": str(models), "home": str(home)}
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def wait_ready(urls: dict[str, str], proc: subprocess.Popen, home: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            workers = requests.get(f"{urls['management']}/models/{MODEL}", headers=management_auth(home), timeout=5)
            workers = workers.json()[0]["workers"]
            if any(w["status"] == "READY" for w in workers):
                return
        except (requests.RequestException, ValueError, KeyError, IndexError):
            pass
        time.sleep(1)
    logs = home / "logs" / "ts_log.log"
    tail = logs.read_text()[-3000:] if logs.exists() else "(no log)"
    raise RuntimeError(f"TorchServe as the runtime starts it never got a READY worker:\n{tail}")


def management_auth(home: Path) -> dict[str, str]:
    """The management key where token authorization is on (so that a config with it on fails the probe
    test itself, not this fixture)."""
    key_file = home / "key_file.json"
    return (
        {"Authorization": f"Bearer {json.loads(key_file.read_text())['management']['key']}"}
        if key_file.exists()
        else {}
    )


def stop(proc: subprocess.Popen) -> None:
    """Stop the foreground JVM and its Python workers by pid."""
    pids = [proc.pid, *serve.children_of(proc.pid)]
    for pid in pids:
        serve._signal(pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for pid in pids:
        serve._signal(pid, signal.SIGKILL)
    proc.wait()


def probes() -> list[tuple[str, dict]]:
    _, container = deployment()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    found = []
    for source, c in (("ServingRuntime", runtime_container()), ("Deployment", container)):
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[kind]["httpGet"]
            found.append((f"{source}.{kind}", {"path": get["path"], "port": named.get(get["port"], get["port"])}))
    return found


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java on PATH")
def test_every_probe_of_the_manifests_gets_200_without_a_token(runtime: dict[str, str]) -> None:
    for name, probe in probes():
        assert probe["port"] == 8080, f"{name} probes port {probe['port']}, not the inference port"
        r = requests.get(runtime["inference"] + probe["path"], timeout=10)  # no Authorization header
        assert r.status_code == 200, f"{name}: {r.status_code} {r.text}"
        assert r.json() == {"status": "Healthy"}


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java on PATH")
def test_model_snapshot_registers_imdb_sentiment_with_its_batch_settings(runtime: dict[str, str]) -> None:
    (described,) = requests.get(f"{runtime['management']}/models/{MODEL}", timeout=10).json()
    shipped = yaml.safe_load((REPO / "model-config.yaml").read_text())
    expected = (MODEL, shipped["batchSize"], shipped["maxBatchDelay"])
    assert (described["modelName"], described["batchSize"], described["maxBatchDelay"]) == expected
    assert described["minWorkers"] == 1 and described["workers"][0]["status"] == "READY"
    # The worker runs as the runtime's user and cannot write the model store.
    models = Path(runtime["models"])
    assert not any(p.stat().st_mode & 0o222 for p in [models, *models.rglob("*")])
    if as_non_root():
        owners = {Path(f"/proc/{pid}").stat().st_uid for pid in serve.children_of(os.getpid())}
        assert owners == {1000}, owners


def kserve_request(flavour: str, explain: bool, texts: list[str]) -> tuple[str, dict]:
    if flavour == "v1":
        return f"/v1/models/{MODEL}:{'explain' if explain else 'predict'}", {"instances": [{"text": t} for t in texts]}
    inputs = [{"name": "reviews", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    return f"/v2/models/{MODEL}/{'explain' if explain else 'infer'}", {"id": "r", "inputs": inputs}


def kserve_answers(flavour: str, body: dict, explain: bool) -> list[dict]:
    if flavour == "v1":
        return body["explanations" if explain else "predictions"]
    return [json.loads(e) for e in body["outputs"][0]["data"]]


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java on PATH")
def test_kserve_v1_and_v2_predict_and_explain_concurrently(runtime: dict[str, str]) -> None:
    calls = [(f, e, TEXTS[k % 4 : k % 4 + 2]) for k, (f, e) in enumerate([("v1", False), ("v1", True)] * 2)]
    calls += [(f, e, TEXTS[k % 4 : k % 4 + 2]) for k, (f, e) in enumerate([("v2", False), ("v2", True)] * 2)]

    def post(call: tuple[str, bool, list[str]]) -> requests.Response:
        path, body = kserve_request(*call)
        return requests.post(runtime["inference"] + path, json=body, timeout=120)

    with ThreadPoolExecutor(len(calls)) as pool:
        responses = list(pool.map(post, calls))
    assert [r.status_code for r in responses] == [200] * len(calls), [r.text for r in responses]
    for (flavour, explain, texts), r in zip(calls, responses):
        answers = kserve_answers(flavour, r.json(), explain)
        assert len(answers) == len(texts)
        assert all(("attributions" in a) == explain for a in answers)
        alone = requests.post(f"{runtime['inference']}/predictions/{MODEL}", json={"text": texts[0]}, timeout=60)
        assert answers[0]["label"] == alone.json()["label"]
        assert answers[0]["logit"] == pytest.approx(alone.json()["logit"], abs=1e-5)


# ---------------------------------------------------------------- the KServe server as its runtime starts it


@pytest.fixture(scope="module")
def kserve_runtime() -> Iterator[str]:
    """``python -m kserve_server`` with the ServingRuntime's args (/mnt/models moved, on loopback and a free
    port), PID 1 of its own PID namespace where the tests run as root (scripts/drain.py)."""
    root = Path(tempfile.mkdtemp(prefix="imdb-kserve-runtime-"))
    pod = drain.start("kserve", root)
    try:
        yield pod.url
    finally:
        drain.stop(pod)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.integration
def test_the_kserve_runtimes_probes_and_routes_answer(kserve_runtime: str) -> None:
    c = runtime_container("imdb-sentiment-kserve")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        r = requests.get(kserve_runtime + c[kind]["httpGet"]["path"], timeout=10)
        assert r.status_code == 200, (kind, r.text)
    for flavour, explain in (("v1", False), ("v1", True), ("v2", False), ("v2", True)):
        path, body = kserve_request(flavour, explain, TEXTS[:2])
        r = requests.post(kserve_runtime + path, json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert [a["label"] for a in kserve_answers(flavour, r.json(), explain)] == ["pos", "pos"]
    metrics = requests.get(kserve_runtime + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "imdb_" in metrics.text


def rolling_restart(server: str) -> dict:
    """scripts/drain.py with the shipped preStop hook and grace period, shortened: 4 clients, 2 s of load,
    the load balancer routing for 1 s after the deletion."""
    args = argparse.Namespace(server=server, clients=4, load=2.0, route=1.0, prestop="shipped", grace=None)
    return drain.measure(args)


@pytest.mark.integration
@pytest.mark.parametrize(
    "server",
    [
        pytest.param(
            "torchserve", marks=pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java")
        ),
        "kserve",
    ],
)
def test_a_rolling_restart_loses_no_request(server: str) -> None:
    """The pod's deletion replayed under load: requests routed after the deletion are answered during the
    preStop delay, nothing is in flight at the stop, and the server exits by itself within the grace period."""
    result = rolling_restart(server)
    assert result["lost"] == 0, result
    assert result["after_deletion_before_sigterm"].get("answered", 0) > 0, result
    assert not result["killed_at_grace"] and result["deletion_to_exit_s"] < result["grace_s"], result
