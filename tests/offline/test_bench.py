"""The benchmark pieces on CPU, on a tiny random model and a small TSV of reviews: what they
record and compute, never how fast anything ran (timings are not asserted)."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from tests.helpers import REPO, WORDS, tiny_artifacts

# isort: split
from handler.text import TextSettings, tokenize
from imdb_bench import engines as bench_engines
from imdb_bench import inputs as bench_inputs
from imdb_bench import load as bench_load
from imdb_bench import record as bench_record
from imdb_bench import served as bench_served
from imdb_bench import workers as bench_workers

OLD_RESULTS = sorted((REPO / "docs").glob("bench-*.json"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_artifacts(tmp_path_factory.mktemp("tiny_model"), embedding_dim=16, n_filters=8)


@pytest.fixture(scope="module")
def reviews_tsv(tmp_path_factory) -> Path:
    """40 reviews of 7 to 300 words from the tiny model's vocabulary, 10 of them in 200..300 tokens."""
    words, rng = WORDS.split(), random.Random(1)
    lengths = [rng.randint(7, 150) for _ in range(30)] + [rng.randint(210, 290) for _ in range(10)]
    texts = [" ".join(rng.choice(words) for _ in range(n)) for n in lengths]
    return bench_inputs.write_tsv(texts, tmp_path_factory.mktemp("data") / "reviews.tsv")


# ----------------------------------------------------------------------------- results writer


def test_written_results_say_what_ran_where_and_load_back(tmp_path: Path) -> None:
    command = bench_record.command_line(["--n", "8", "--out", "a b.json"], str(REPO / "scripts" / "bench_x.py"))
    assert command == "python scripts/bench_x.py --n 8 --out 'a b.json'"
    machine = bench_record.machine_info("cpu")
    path = bench_record.write(tmp_path / "r.json", "engines", command, machine, {"seed": 0}, in_process=[{"a": 1}])
    report = bench_record.load(path)
    assert report["schema"] == bench_record.SCHEMA and report["benchmark"] == "engines"
    assert report["argv"] == ["python", "scripts/bench_x.py", "--n", "8", "--out", "a b.json"]
    assert "load average" in report["machine"]["uptime_at_start"]
    assert report["machine"]["cpu_cores"] >= 1 and report["machine"]["device"] == "cpu"
    assert report["inputs"] == {"seed": 0} and report["in_process"] == [{"a": 1}]


@pytest.mark.parametrize("path", OLD_RESULTS, ids=[p.name for p in OLD_RESULTS])
def test_the_results_in_docs_stay_readable(path: Path) -> None:
    """Schema 1 (scripts/bench.py of issue 5) and schema 2 files: each names a benchmark whose
    section it holds."""
    report = bench_record.load(path)
    sections = {
        1: {"engines": "in_process", "served": "serve", "workers": "handler_workers"},
        2: {"engines": "in_process", "served": "served", "workers": "handler_workers"},
    }[report["schema"]]
    assert report["command"].startswith("python scripts/bench")
    assert report["benchmark"] != "none"
    for name in report["benchmark"].split("+"):
        assert report[sections[name]], (path.name, name)


def test_a_file_that_is_not_a_result_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"machine": {}}))
    with pytest.raises(ValueError, match="lacks command, inputs"):
        bench_record.load(tmp_path / "x.json")


def test_markdown_tables_have_a_row_per_result_and_format_numbers() -> None:
    table = bench_record.markdown([{"a": 1234.56, "b": "x"}, {"a": 0.000123}], {"a": "rate", "b": "name"})
    assert table.splitlines() == ["| rate | name |", "|---|---|", "| 1,234.6 | x |", "| 0.000123 |  |"]


# ----------------------------------------------------------------------------- inputs


def test_reviews_are_a_seeded_sample_at_real_lengths_or_in_the_256_band(reviews_tsv: Path) -> None:
    texts, tokens = bench_inputs.pick_reviews(str(reviews_tsv), 12, seed=3, lengths="imdb")
    again, _ = bench_inputs.pick_reviews(str(reviews_tsv), 12, seed=3, lengths="imdb")
    other, _ = bench_inputs.pick_reviews(str(reviews_tsv), 12, seed=4, lengths="imdb")
    assert texts == again and texts != other and tokens == tokenize(texts)
    _, band = bench_inputs.pick_reviews(str(reviews_tsv), 10, seed=0, lengths="256")
    assert len(band) == 10 and all(200 <= len(t) <= 300 for t in band)
    with pytest.raises(RuntimeError, match="only 10 test reviews"):
        bench_inputs.pick_reviews(str(reviews_tsv), 11, seed=0, lengths="256")


def test_length_stats_count_what_the_model_truncates() -> None:
    stats = bench_inputs.length_stats([["a"] * 5, ["a"] * 10, ["a"] * 30], TextSettings(min_len=2, max_tokens=10))
    assert stats["n"] == 3 and stats["min"] == 5 and stats["max"] == 30 and stats["truncated_at_10"] == 1


def test_the_reviews_file_for_the_gpu_machine_round_trips(reviews_tsv: Path, tmp_path: Path) -> None:
    out = bench_inputs.main([str(tmp_path / "r.tsv"), "--n", "4", "--data", str(reviews_tsv), "--lengths", "imdb"])
    written = [line.split("\t", 1)[1] for line in out.read_text().splitlines()]
    picked, _ = bench_inputs.pick_reviews(str(reviews_tsv), 4 + 64, 0, "imdb")
    assert written == [" ".join(t.split()) for t in picked]


# ----------------------------------------------------------------------------- load generator


def read(raw: bytes) -> int:
    async def go() -> int:
        reader = asyncio.StreamReader()
        reader.feed_data(raw + b"HTTP/1.1 204 No Content\r\n\r\n")
        reader.feed_eof()
        status = await bench_load.read_response(reader)
        assert await bench_load.read_response(reader) == 204  # the first response was read exactly
        return status

    return asyncio.run(go())


def test_the_load_generator_reads_sized_and_chunked_responses_to_their_end() -> None:
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello") == 200
    chunked = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n"
    assert read(chunked) == 400


# ----------------------------------------------------------------------------- engines


def test_the_engine_comparison_records_every_case_and_ends_with_the_headline(
    model_dir: Path, reviews_tsv: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "engines.json"
    argv = ["--n", "4", "--batch-sizes", "2", "--artifacts", str(model_dir), "--data", str(reviews_tsv)]
    report = bench_engines.main([*argv, "--out", str(out)])
    assert report["benchmark"] == "engines" and report["command"].startswith("python scripts/bench_engines.py --n 4")
    names = [r["name"] for r in report["in_process"]]
    assert names == ["tutorial", "captum batched", "fast", "fast 500 steps", "fast adaptive", "fast exact"]
    assert all(r["reviews"] == 4 for r in report["in_process"][1:]) and report["inputs"]["token_lengths"]["n"] == 4
    exact = report["in_process"][-1]
    assert report["summary"]["rel_delta_p90"] == exact["rel_delta_p90"] < 1e-5
    assert report["agreement"]["fast_vs_captum_batched"] < 1e-5  # equal steps, float32
    last = capsys.readouterr().out.strip().splitlines()[-1]
    s = report["summary"]
    assert last == (
        f"speedup_vs_tutorial={s['speedup_vs_tutorial']:.1f} "
        f"speedup_vs_captum_batched={s['speedup_vs_captum_batched']:.1f} rel_delta_p90={s['rel_delta_p90']:.2e}"
    )


# ----------------------------------------------------------------------------- served


def test_requests_carry_one_review_or_kserve_batches_of_them() -> None:
    texts = [f"review {i}" for i in range(5)]
    assert [json.loads(b) for b in bench_served.request_bodies(texts, 1)] == [{"text": t} for t in texts]
    batches = [json.loads(b)["instances"] for b in bench_served.request_bodies(texts, 2)]
    assert batches == [[{"text": t} for t in texts[i : i + 2]] for i in (0, 2, 4)]


class FakeServer:
    inference = "http://127.0.0.1:1"

    def keys(self) -> dict:
        return {"inference": "k"}


def test_each_served_figure_is_divided_by_the_in_process_handler_measured_beside_it(monkeypatch) -> None:
    events, served_rates = [], iter([10.0, 30.0, 50.0, 40.0, 20.0])

    def drive(url: str, key: str, bodies: list[bytes], concurrency: int) -> dict:
        events.append(("served", url, key, len(bodies), concurrency))
        return {"requests": len(bodies), "errors": 1, "per_s": next(served_rates), "p50_ms": 1.0, "p99_ms": 2.0}

    class Reference:
        bodies = bench_served.request_bodies(["a fine film", "dull .", "it was a horrible movie", "great"], 2)

        def rate(self, kind: str, requests_per_call: int) -> float:
            events.append(("in-process", kind, requests_per_call))
            return 100.0

    monkeypatch.setattr(bench_served.bench_load, "drive", drive)
    labels = {"server": "torchserve", "batchSize": 4, "maxBatchDelay": 10, "worker_threads": "as shipped"}
    row = bench_served.measure(FakeServer(), Reference(), 2, "explanations", 8, labels, repeat=5)
    pair = [("in-process", "explanations", 4), ("served", "http://127.0.0.1:1/explanations/imdb_sentiment", "k", 2, 8)]
    assert events == pair * 5  # back to back; 8 clients fill the server's batches of 4: the reference's too
    # the median pair, 2 reviews a request
    assert row["ratio_runs"] == [0.2, 0.6, 1.0, 0.8, 0.4] and row["ratio"] == 0.6
    assert row["reviews_per_s"] == 60.0 and row["inprocess_reviews_per_s"] == 100.0 and row["errors"] == 5
    # A lone client is served one request at a time: so is its reference.
    events.clear()
    served_rates = iter([10.0])
    row = bench_served.measure(FakeServer(), Reference(), 2, "explanations", 1, labels, repeat=1)
    assert events[0] == ("in-process", "explanations", 1) and row["inprocess_per_call"] == 1


def test_the_in_process_reference_answers_every_request(model_dir: Path) -> None:
    bodies = bench_served.request_bodies(["a fine film", "dull .", "it was a horrible movie"], 2)
    assert bench_served.InProcess(model_dir, bodies, 3).rate("explanations", 2) > 0
    with pytest.raises(RuntimeError, match="2 answers to 2"):
        bench_served.InProcess(model_dir, ['{"no_text": 1}', '{"text": "ok"}'], 2).rate("predictions", 1)


# ----------------------------------------------------------------------------- workers


def test_kserve_batches_of_the_workers_are_full() -> None:
    rows = bench_workers.kserve_batch(["a", "b", "c"], requests=2, per_request=4)
    instances = [json.loads(r["body"])["instances"] for r in rows]
    assert [[i["text"] for i in x] for x in instances] == [["a", "b", "c", "a"], ["b", "c", "a", "b"]]


def test_a_worker_process_explains_its_share(model_dir: Path) -> None:
    row = bench_workers.run_workers(model_dir, ["a fine film", "it was a horrible movie"], 1, None, shape=(2, 3, 2))
    assert row["workers"] == 1 and row["reviews"] == 12 and row["per_s"] > 0 and row["gpu_id"] is None


def test_a_worker_whose_answers_are_errors_fails_the_run(model_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="lacks explanations"):
        bench_workers.run_workers(model_dir, ["   "], 1, None, shape=(1, 2, 1))  # empty reviews: 400s inline


def test_a_worker_that_cannot_load_fails_the_run_at_once(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="worker failed to start"):
        bench_workers.run_workers(tmp_path, ["a fine film"], 1, None, shape=(1, 1, 1))  # no model there


@pytest.mark.integration
def test_the_served_case_drives_a_real_torchserve_and_divides_by_the_handler(reviews_tsv: Path, tmp_path: Path) -> None:
    """bench_served end to end on the shipped model: a .mar, TorchServe and the KServe server on free
    ports, 8 requests at concurrency 1 and 2, each beside an in-process reference, both stopped."""
    out = tmp_path / "served.json"
    argv = ["--requests", "8", "--concurrency", "1", "2", "--kinds", "explanations", "--data", str(reviews_tsv)]
    report = bench_served.main([*argv, "--out", str(out)])
    assert report["benchmark"] == "served" and report["inputs"]["token_lengths"]["n"] == 8
    cells = [(r["server"], r["concurrency"], r["requests"], r["errors"]) for r in report["served"]]
    assert cells == [(s, c, 8, 0) for s in ("torchserve", "kserve") for c in (1, 2)]
    assert [r["kind"] for r in report["handler_one_request_per_call"]] == ["explanations"]
    for r in report["served"]:
        assert r["ratio"] == r["reviews_per_s"] / r["inprocess_reviews_per_s"]
