"""Deployment (issue 9): the Dockerfile lint, the manifests against KServe's and Kubernetes' schemas,
and TorchServe started exactly as the ServingRuntime starts it, answering KServe v1/v2 and the probes.

The image itself is checked by ``make image-test`` (scripts/image_test.py): minutes, not for every run.
"""

from __future__ import annotations

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
from helpers import REPO, SCRIPTS, SHIPPED

sys.path.insert(0, str(SCRIPTS))

import build_mar  # noqa: E402
import serve  # noqa: E402

DEPLOY = REPO / "deploy"
CRD_SCHEMA = REPO.parent / "shared" / "kserve" / "inferenceservice-v1beta1.schema.json.gz"
K8S_VERSION = "1.30"
MODEL = "imdb_sentiment"
TEXTS = ["It was a fantastic performance !", "Best film ever", "It was a horrible movie", "Such a great show!"]


def manifests(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def runtime_container() -> dict:
    (runtime,) = manifests(DEPLOY / "kserve" / "servingruntime.yaml")
    (container,) = runtime["spec"]["containers"]
    return container


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
@pytest.mark.parametrize("name", ["inferenceservice-cpu.yaml", "inferenceservice-gpu.yaml"])
def test_inferenceservice_matches_kserves_crd_schema(name: str) -> None:
    schema = json.loads(gzip.decompress(CRD_SCHEMA.read_bytes()))
    validator = jsonschema.Draft7Validator(schema)
    (isvc,) = manifests(DEPLOY / "kserve" / name)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(isvc)]
    assert not errors, errors
    # The schema really constrains the predictor (a misspelled resources block is refused).
    broken = deepcopy(isvc)
    broken["spec"]["predictor"]["model"]["resources"] = [{"limits": "1Gi"}]
    assert not validator.is_valid(broken)
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == manifests(DEPLOY / "kserve" / "servingruntime.yaml")[0]["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime_supported_formats()}


def runtime_supported_formats() -> list[dict]:
    return manifests(DEPLOY / "kserve" / "servingruntime.yaml")[0]["spec"]["supportedModelFormats"]


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "networkpolicy.yaml"])
def test_kubernetes_objects_match_the_kubernetes_schemas(name: str) -> None:
    for doc in manifests(DEPLOY / "kubernetes" / name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_serving_runtimes_container_is_a_valid_kubernetes_container() -> None:
    """ServingRuntime is a CRD without a schema here: its container and volumes are checked as a Pod's."""
    (runtime,) = manifests(DEPLOY / "kserve" / "servingruntime.yaml")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime"},
        "spec": {"containers": runtime["spec"]["containers"], "volumes": runtime["spec"]["volumes"]},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_runtime_deployment_and_image_start_torchserve_the_same_way() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", (REPO / "Dockerfile").read_text(), re.M)
    (deployment,) = manifests(DEPLOY / "kubernetes" / "deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert json.loads(cmd.group(1)) == runtime_container()["args"] == container["args"]
    for c in (runtime_container(), container):
        security = {**deployment["spec"]["template"]["spec"]["securityContext"], **c["securityContext"]}
        assert security["runAsUser"] == 1000 and security["runAsNonRoot"] and security["readOnlyRootFilesystem"]


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
    """/mnt/models as KServe's storage initializer leaves it: config/ and model-store/, read-only."""
    models = root / "mnt" / "models"
    (models / "config").mkdir(parents=True)
    shutil.copy(DEPLOY / "storage" / "config" / "config.properties", models / "config")
    shutil.copy(REPO / "metrics.yaml", models / "config")
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
    (service,) = manifests(DEPLOY / "kserve" / isvc)
    labels = service["metadata"].get("labels", {})
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
    pids = [proc.pid, *serve._children(proc.pid)]
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
    (deployment,) = manifests(DEPLOY / "kubernetes" / "deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
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
        owners = {Path(f"/proc/{pid}").stat().st_uid for pid in serve._children(os.getpid())}
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
