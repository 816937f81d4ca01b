"""Reliability runs in miniature (issue 20; the full runs are `make soak` and `make chaos`,
docs/reliability.md): the hostile soak with its RSS samples and the kill -9 under imdb-explain's
bulk mode, on TorchServe and on the KServe server; and the cluster's TorchServe configuration
logging through the repository's bounded log4j2.xml. No speed is asserted."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imdb_ops import build_mar, chaos, soak, targets
from tests.helpers import REPO, SHIPPED
from tests.integration import test_deploy

pytestmark = pytest.mark.integration
NO_JAVA = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java on PATH")
DEPLOY_CONFIG = REPO / "deploy" / "storage" / "config" / "config.properties"
LOG4J_IN_CLUSTER = "/mnt/models/config/log4j2.xml"


@pytest.fixture(scope="module", params=[pytest.param("torchserve", marks=NO_JAVA), "kserve"])
def target(request) -> Iterator[targets.Target]:
    with targets.started(request.param) as started:
        yield started


def check_rss(rss: dict, interval: float) -> None:
    """Sampled from the start, every ``interval`` seconds, and once more at the end; summarised right."""
    times, mb = [t for t, _ in rss["samples"]], [m for _, m in rss["samples"]]
    assert len(times) >= 3 and times[0] == 0 and times == sorted(times)
    assert all(0.6 * interval < b - a < 3 * interval for a, b in zip(times[:-2], times[1:-1])), times
    assert min(mb) > 100, "the server's processes were not counted"
    assert (rss["start_mb"], rss["peak_mb"], rss["end_mb"]) == (mb[0], max(mb), mb[-1])
    half = len(mb) // 2
    assert (rss["growth_first_half_mb"], rss["growth_second_half_mb"]) == (
        round(mb[half] - mb[0], 1),
        round(mb[-1] - mb[half], 1),
    )
    assert rss["interval_s"] == interval


def test_a_short_hostile_soak_samples_rss_and_answers_every_request(target: targets.Target) -> None:
    shares = {"hostile": 0.1, "novel": 0.2, "fuzz": 0.05}
    report = soak.soak(target, 600, 8, shares, interval=0.5)
    assert report["lost"] == 0 and report["unexpected_5xx_or_lost"] == 0, report["by_category"]
    # Every request counted once in its category; every category and hostile kind was sent.
    by = report["by_category"]
    assert sum(sum(by[c].values()) for c in ("ordinary", "novel", "hostile", "fuzz")) == 600
    assert sum(report["statuses"].values()) == 600
    assert set(by["novel"]) == {"200"} and {*soak.HOSTILE, soak.LARGE} <= set(by)  # the plan is seeded
    check_rss(report["rss"], 0.5)
    assert report["server"] == target.server
    for key in ("p50_ms_ok", "p99_ms_ok", "per_s", "seconds", "log_bytes_per_request", "restarts", "5xx"):
        assert key in report


def test_a_kill_under_the_clients_bulk_mode_loses_no_review(target: targets.Target) -> None:
    """kill -9 of TorchServe's worker (or of the KServe server, started again as a pod's container)
    while imdb-explain explains 1,200 reviews: every review answered, the retries in its summary."""
    items = chaos.synthetic_reviews(1200)
    report = chaos.chaos(target, items, kills=1, retries=5, concurrency=2)
    assert report["client"]["exit"] == 0, report["client_summary"]
    assert (report["missing"], report["failed"], report["answered"]) == (0, 0, 1200)
    assert report["duplicated_lines"] == 0 and report["accuracy"] > 0.9
    summary = report["client_summary"]
    assert (summary["reviews"], summary["failed"], summary["error"]) == (1200, 0, None)
    assert summary["retries"] >= 1 and summary["retries"] == summary["retry_lines"], summary
    (kill,) = report["kills"]
    assert kill["recovery_s"] is not None and kill["after_reviews"] >= 600
    assert set(summary["retried"]) <= {"500", "502", "503", "504", "507", "connection error"}
    if target.server == "kserve":
        assert len(report["restarts"]) == 1 and report["restarts"][0]["pid"] != kill["killed_pid"]


def test_the_client_summary_is_read_as_the_client_writes_it() -> None:
    stderr = (
        "imdb-explain: http://x answered 507; retry 1 of 5 in 0.4 s\n"
        "imdb-explain: cannot reach http://x: Connection refused; retry 1 of 5 in 0.3 s\n"
        "imdb-explain: 10 review(s), 1 failed; accuracy 90.0% on 10 labelled (true/predicted: neg/neg 9); "
        "2 retries (507: 1, connection error: 1)\n"
    )
    summary = chaos.client_summary(stderr)
    assert summary["retried"] == {"507": 1, "connection error": 1} and summary["retries"] == summary["retry_lines"] == 2
    assert (summary["reviews"], summary["failed"], summary["error"]) == (10, 1, None)
    assert chaos.client_summary("imdb-explain: error: no server at http://x\n")["error"].endswith("http://x")


# ---------------------------------------------------------------- the cluster's log configuration


def test_the_cluster_config_names_the_log4j2_xml_of_the_storage_layout() -> None:
    vmargs = re.search(r"^vmargs=(.*)$", DEPLOY_CONFIG.read_text(), re.M).group(1).split()
    assert f"-Dlog4j.configurationFile={LOG4J_IN_CLUSTER}" in vmargs
    assert {"-Xmx256m", "-XX:+ExitOnOutOfMemoryError"} <= set(vmargs)


def test_the_image_puts_log4j2_xml_where_the_cluster_config_looks() -> None:
    copies = [line.split()[1:] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    assert any(args[-1] == "/mnt/models/config/" and "log4j2.xml" in args[:-1] for args in copies), copies


MB = {"KB": 1e3, "MB": 1e6, "GB": 1e9}
QUANTITY = {"Mi": 2**20, "Gi": 2**30}


def log_budget_bytes(xml: str) -> float:
    """The most log4j2.xml lets the logs hold: per rolling file one active file (the size policy)
    plus its gzipped predecessors up to their IfAccumulatedFileSize."""
    size = re.search(r'<Property name="size">(\d+) (KB|MB|GB)</Property>', xml)
    active = int(size.group(1)) * MB[size.group(2)]
    files = len(re.findall(r"<RollingFile ", xml))
    kept = sum(int(n) * MB[u] for n, u in re.findall(r'IfAccumulatedFileSize exceeds="(\d+) (KB|MB|GB)"', xml))
    return files * active + kept


@pytest.mark.parametrize("manifest", ["kubernetes/deployment.yaml", "kserve/servingruntime.yaml"])
def test_the_bounded_logs_fit_the_working_directory_volume_of_the_torchserve_pod(manifest: str) -> None:
    """TorchServe writes logs/ under its working directory, /home/model-server: an emptyDir whose
    sizeLimit, once exceeded, gets the pod evicted. log4j2.xml's byte budget must fit in it with room
    for the key file and the model snapshot."""
    text = (REPO / "deploy" / manifest).read_text()
    volume = re.search(r"- name: workdir\s+emptyDir: \{sizeLimit: (\d+)(Mi|Gi)\}", text)
    limit = int(volume.group(1)) * QUANTITY[volume.group(2)]
    budget = log_budget_bytes((REPO / "log4j2.xml").read_text())
    assert budget <= 0.9 * limit, (budget / 2**20, limit / 2**20)


def cluster_layout(root: Path) -> Path:
    """/mnt/models under ``root``: the cluster config (its /mnt/models paths moved there, as
    test_deploy.runtime_args moves the runtime's), metrics.yaml, the repository's log4j2.xml, the archive."""
    models = root / "mnt" / "models"
    (models / "config").mkdir(parents=True)
    text = DEPLOY_CONFIG.read_text().replace("/mnt/models", str(models))
    (models / "config" / "config.properties").write_text(text)
    for name in ("metrics.yaml", "log4j2.xml"):
        shutil.copy(REPO / name, models / "config")
    build_mar.build(SHIPPED, models / "model-store")
    return models


@NO_JAVA
def test_torchserve_started_as_the_runtime_starts_it_logs_through_the_bounded_log4j2(tmp_path: Path) -> None:
    """Only the repository's log4j2.xml writes worker_metrics.log and keeps the per-request lines out
    of ts_log.log; TorchServe's built-in configuration does neither."""
    models, home = cluster_layout(tmp_path), tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    env, ports = test_deploy.runtime_env(models, home)
    with (tmp_path / "torchserve.out").open("wb") as out:
        proc = subprocess.Popen(test_deploy.runtime_args(models), cwd=home, env=env, stdout=out, stderr=out)
        try:
            urls = {api: f"http://127.0.0.1:{port}" for api, port in ports.items()}
            test_deploy.wait_ready(urls, proc, home)
            for text in ("great movie", "a terrible film"):
                r = requests.post(f"{urls['inference']}/predictions/{targets.MODEL}", json={"text": text}, timeout=60)
                assert r.status_code == 200, r.text
        finally:
            test_deploy.stop(proc)
    logs = home / "logs"
    assert (logs / "worker_metrics.log").exists(), sorted(p.name for p in logs.iterdir())
    assert "Sending response for jobId" not in (logs / "ts_log.log").read_text()
    assert "[METRICS]" not in (tmp_path / "torchserve.out").read_text()  # nothing copied to stdout


def test_the_soak_and_chaos_programs_take_the_server_and_write_one_json_document(capsys) -> None:
    """`make soak SERVER=kserve` in miniature: the program's options and its one JSON document."""
    soak.main(["soak", "--server", "kserve", "--requests", "150", "--rss-interval", "1", "--concurrency", "4"])
    report = json.loads(capsys.readouterr().out)
    assert report["server"] == "kserve" and report["requests"] == 150 and report["lost"] == 0
    assert len(report["rss"]["samples"]) >= 2 and len(report["load_average"]) == 3
    args = soak.parser().parse_args(["chaos"])
    assert (args.server, args.reviews, args.kills, args.retries, args.requests) == ("torchserve", 5000, 3, 5, 20_000)
