"""The imdb-explain client without a server: rendering (HTML, terminal), inputs (text, folders,
CSV, JSONL, stdin), options, outputs (JSONL, JSON, HTML), and bulk KServe v1 requests and error
messages against a free port and a loopback HTTP stub that answers as the handler does."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import threading
import time
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imdb_client import transport
from imdb_client.cli import main, parse_args
from imdb_client.items import InputError, Item, read_items
from imdb_client.report import COLUMNS, Source, render_html
from imdb_client.terminal import attribution_style, colored_tokens, plain_tokens, render_terminal
from imdb_client.transport import RetryPolicy, chunks, resolve_endpoint, retry_after

HOSTILE = "<script>alert(1)</script>"
SOURCE = Source("imdb_sentiment", "http://127.0.0.1:8080")


def explanation(tokens: list[str], normalized: list[float], label: str = "pos") -> dict:
    """A response shaped like /explanations (raw attributions = 2 x normalized, for a visible sum)."""
    return {
        "label": label,
        "score": 0.9 if label == "pos" else 0.1,
        "probabilities": {"neg": 0.1, "pos": 0.9},
        "logit": 2.2,
        "n_tokens": len(tokens),
        "truncated": False,
        "unknown_tokens": 0,
        "tokens": tokens,
        "attributions": [2 * v for v in normalized],
        "attributions_normalized": normalized,
        "delta": 1e-5,
        "reference_logit": 0.1,
        "target": "logit",
        "method": "gausslegendre",
        "n_steps": 50,
        "engine": "fast",
    }


class TreeCheck(HTMLParser):
    """Fails on an end tag that does not close the innermost open element; records text and tags."""

    VOID = {"meta", "br", "hr", "img", "link", "input", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> TreeCheck:
    tree = TreeCheck()
    tree.feed(page)
    tree.close()
    assert tree.stack == [], f"unclosed: {tree.stack}"
    return tree


def test_html_report_is_balanced_and_self_contained():
    rows = [
        (Item("A fantastic film", "pos/1.txt", "pos"), explanation(["a", "fantastic", "film"], [0.1, 0.9, -0.4])),
        (Item("dull", "", None), {"label": "neg", "score": 0.2, "logit": -1.4}),  # --predict answer
        (Item(" ", "x", None), {"code": 400, "type": "BadRequest", "message": "review text is empty"}),
    ]
    page = render_html(rows, SOURCE)
    tree = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    tags = [t for t, _ in tree.tags]
    reviews_table = page[page.index('<table class="reviews">') :]
    assert reviews_table.count("<tr>") == 4 and "table" in tags  # header + 3 rows
    assert not {"script", "link", "img", "iframe", "object"} & set(tags)
    for _, attrs in tree.tags:
        assert "src" not in attrs and "href" not in attrs
    # No address but the server's, shown as text in the header.
    assert not re.search(r"@import|url\(|https?://", page.replace(f"<dd>{SOURCE.server}</dd>", ""))
    assert "review text is empty" in "".join(tree.text)


def test_html_escapes_hostile_tokens_text_and_names():
    hostile_tokens = [HOSTILE, '"><img src=x onerror=alert(2)>', "&amp;"]
    rows = [
        (Item(HOSTILE, f"dir/{HOSTILE}.txt", "pos"), explanation(hostile_tokens, [0.5, -0.5, 0.1])),
        (Item(HOSTILE, "", None), {"label": "neg", "score": 0.2, "logit": -1.4}),
        (Item(HOSTILE, "", None), {"code": 400, "message": HOSTILE}),
    ]
    page = render_html(rows, SOURCE)
    tree = parse(page)
    tags = {t for t, _ in tree.tags}
    assert "script" not in tags and "img" not in tags
    assert "<script" not in page and "<img" not in page
    text = "".join(tree.text)
    assert text.count(HOSTILE) >= 4  # token, name, predicted-only text, error message
    assert "&amp;" in text  # the literal token, shown as typed


def test_html_marks_sign_and_size_of_attributions():
    page = render_html([(Item("x"), explanation(["good", "meh", "bad"], [0.8, 0.2, -0.8]))], SOURCE)
    found = re.findall(r'hsl\((\d+), 75%, (\d+)%\)" title="[^"]+">(\w+)</mark>', page)
    hsl = {word: (int(hue), int(light)) for hue, light, word in found}
    assert hsl["good"][0] == 120 and hsl["meh"][0] == 120 and hsl["bad"][0] == 0  # green +, red -
    assert hsl["good"][1] < hsl["meh"][1]  # stronger attribution, darker mark


def test_terminal_style_maps_sign_and_magnitude():
    strong_pos, weak_pos, strong_neg = attribution_style(0.9), attribution_style(0.2), attribution_style(-0.9)
    for style in (strong_pos, weak_pos, strong_neg):
        assert style.bgcolor is not None and style.color.name == "black"
    g = strong_pos.bgcolor.triplet
    r = strong_neg.bgcolor.triplet
    assert g.green > g.red and g.green > g.blue
    assert r.red > r.green and r.red > r.blue
    assert sum(strong_pos.bgcolor.triplet) < sum(weak_pos.bgcolor.triplet)  # larger |a|: more intense
    assert attribution_style(0.01).bgcolor is None and attribution_style(-0.01).bgcolor is None


def test_colored_and_plain_tokens():
    result = explanation(["a", "fantastic", "bore"], [0.01, 0.9, -0.4])
    text = colored_tokens(result)
    assert text.plain == "a fantastic bore"
    styles = {text.plain[s.start : s.end]: s.style for s in text.spans}
    assert styles["fantastic"].bgcolor.triplet.green > styles["fantastic"].bgcolor.triplet.red
    assert styles["bore"].bgcolor.triplet.red > styles["bore"].bgcolor.triplet.green
    assert plain_tokens(result) == "a fantastic[+0.90] bore[-0.40]"
    shown = render_terminal(result, Item("x", "r1", "neg"), color=False).plain
    assert "true=neg ✗" in shown and "pos" in shown and "delta=1.00e-05" in shown
    assert "fantastic (+0.90)" in shown and "bore (-0.40)" in shown


def test_read_reviews_forms(tmp_path):
    for label, name, text in (("pos", "1_9.txt", "great"), ("neg", "2_1.txt", "awful")):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / name).write_text(text)
    lines = tmp_path / "many.txt"
    lines.write_text("first review\n\nsecond review\n")
    got = read_items(
        [str(tmp_path / "data"), str(lines), "-", "just text"], label="pos", stdin=io.StringIO("from stdin")
    )
    assert [(r.text, r.label) for r in got] == [
        ("awful", "neg"),
        ("great", "pos"),
        ("first review", "pos"),
        ("second review", "pos"),
        ("from stdin", "pos"),
        ("just text", "pos"),
    ]
    assert got[3].name.endswith("many.txt:3") and got[0].name.endswith("2_1.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .txt files"):
        read_items([str(tmp_path / "empty")])


def test_endpoint_precedence(tmp_path, monkeypatch):
    keys = tmp_path / "key_file.json"
    keys.write_text(
        json.dumps(
            {"inference": {"key": "from-file", "expiration time": "2030-01-01T00:00:00Z"}, "management": {"key": "m"}}
        )
    )
    monkeypatch.delenv("IMDB_TOKEN", raising=False)
    monkeypatch.delenv("IMDB_URL", raising=False)
    ep = resolve_endpoint(None, None, str(keys))
    assert (ep.url, ep.token) == ("http://127.0.0.1:8080", "from-file") and str(keys) in ep.token_source
    monkeypatch.setenv("IMDB_TOKEN", "from-env")
    monkeypatch.setenv("IMDB_URL", "http://127.0.0.1:9/")
    ep = resolve_endpoint(None, None, str(keys))
    assert (ep.url, ep.token, ep.token_source) == ("http://127.0.0.1:9", "from-env", "$IMDB_TOKEN")
    assert resolve_endpoint("http://h:1", "flag", str(keys)).token == "flag"
    monkeypatch.delenv("IMDB_TOKEN")
    assert resolve_endpoint(None, None, str(tmp_path / "missing.json")).token is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The client's waits between attempts, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(transport, "pause", recorded.append)
    return recorded


def test_server_down_names_the_address_and_make_serve(capsys, waits):
    port = free_port()
    assert main(["--url", f"http://127.0.0.1:{port}", "--token", "t", "--retries", "0", "a fine film"]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "connection refused" in err and "make serve" in err
    assert waits == []
    # With retries (the default, 5), the same message once they are spent, and a line per retry.
    assert main(["--url", f"http://127.0.0.1:{port}", "--token", "t", "a fine film"]) == 1
    err = capsys.readouterr().err
    assert "connection refused (after 5 retries)" in err and "make serve" in err
    assert len(waits) == 5 and err.count("Connection refused; retry ") == 5


DROP = object()  # an answer that closes the connection unanswered: the client sees a connection error


def _handler_class(server):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.seen.append((self.path, self.headers.get("Authorization"), body))
            reply = server.answer(self.path, body) if callable(server.answer) else server.answer
            if reply is DROP:
                self.close_connection = True
                return
            status, answer, *headers = reply
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers[0] if headers else {}).items():
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(data)
            except BrokenPipeError:  # the client gave up (its read timeout)
                pass

        def log_message(self, *args):
            pass

    return Handler


def start_stub(port: int = 0) -> ThreadingHTTPServer:
    """A loopback HTTP server; ``answer(path, body)`` (or a fixed reply) answers each POST with
    ``(status, body)``, ``(status, body, headers)`` or DROP."""
    server = ThreadingHTTPServer.__new__(ThreadingHTTPServer)
    server.seen, server.answer = [], (200, {})
    ThreadingHTTPServer.__init__(server, ("127.0.0.1", port), _handler_class(server))
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def stub():
    server = start_stub()
    yield server
    server.shutdown()
    server.server_close()


def like_the_handler(per_review):
    """A stub answer function with the handler's KServe v1 semantics: one answer or error object per
    instance in {"explanations"|"predictions": [...]}, 200 if any review succeeded, else the first
    error's status; plain requests get their own answer and status. ``per_review(text, body)``
    returns (status, answer) for one review."""

    def answer(path: str, body: dict) -> tuple[int, dict]:
        if "instances" not in body:
            return per_review(body["text"], body)
        answers = [per_review(instance["text"], instance) for instance in body["instances"]]
        key = "explanations" if path.endswith(":explain") else "predictions"
        ok = [status for status, _ in answers if status == 200]
        return (200 if ok else answers[0][0]), {key: [a for _, a in answers]}

    return answer


def by_text(text: str, body: dict) -> tuple[int, dict]:
    """Answers that show which review they belong to: label from the text, logit = its length."""
    if text == "bad":
        return 400, {"code": 400, "type": "BadRequest", "message": "review text is bad"}
    answer = explanation(["a", "fantastic", text], [0.1, 0.9, -0.4], "neg" if "awful" in text else "pos")
    return 200, {**answer, "logit": float(len(text)), "model_version": "1.0", "future_field": {"x": 1}}


def test_wrong_token_says_so_and_where_it_came_from(stub, tmp_path, capsys):
    keys = tmp_path / "key_file.json"
    keys.write_text(json.dumps({"inference": {"key": "stale"}, "management": {"key": "m"}}))
    stub.answer = (
        400,
        {
            "code": 400,
            "type": "InvalidKeyException",
            "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly",
        },
    )
    assert main(["--url", stub.url, "--key-file", str(keys), "a film", "another"]) == 1
    err = capsys.readouterr().err
    assert "wrong or expired" in err and str(keys) in err and stub.url in err
    assert len(stub.seen) == 1  # both reviews in one bulk request
    assert stub.seen[0][:2] == ("/v1/models/imdb_sentiment:explain", "Bearer stale")


def test_a_fatal_error_stops_sending(stub, capsys):
    stub.answer = (400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"})
    texts = [f"review {i}" for i in range(20)]
    assert main(["--url", stub.url, "--token", "k", "--bulk", "1", "--concurrency", "1", *texts]) == 1
    assert "wrong or expired" in capsys.readouterr().err
    assert len(stub.seen) <= 2  # the window of requests in flight, not all 20


def test_per_review_errors_inside_a_bulk_answer_are_shown_per_review(stub, capsys, monkeypatch):
    monkeypatch.delenv("IMDB_TOKEN", raising=False)
    stub.answer = like_the_handler(by_text)
    assert main(["--url", stub.url, "--token", "k", "--no-color", "bad", "a fantastic film"]) == 1
    out, err = capsys.readouterr()
    assert "'bad': error 400 BadRequest: review text is bad" in err
    assert "fantastic[+0.90]" in out and "error 400 BadRequest: review text is bad" in out
    assert [s[0] for s in stub.seen] == ["/v1/models/imdb_sentiment:explain"]
    # A request whose reviews all fail gets the first error's status, with the errors inline.
    stub.seen.clear()
    assert main(["--url", stub.url, "--token", "k", "--jsonl", "bad", "bad"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["answer"]["message"] for line in lines] == ["review text is bad"] * 2


def labelled_jsonl(tmp_path) -> tuple[list[str], Path]:
    """130 reviews of different lengths (the stub's logit = the length), labelled pos, as JSONL."""
    texts = [f"review number {i:03d}" + "!" * (i % 7) for i in range(130)]
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps({"text": t, "label": "pos"}) + "\n" for t in texts))
    return texts, source


def jsonl_out(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_bulk_requests_hold_at_most_bulk_reviews_and_answers_keep_input_order(stub, tmp_path, capsys):
    stub.answer = like_the_handler(by_text)
    texts, source = labelled_jsonl(tmp_path)
    assert main(["--url", stub.url, "--token", "k", "--jsonl", "--concurrency", "3", str(source)]) == 0
    sizes = [len(body["instances"]) for _, _, body in stub.seen]
    assert sorted(sizes) == [2, 64, 64]
    lines = jsonl_out(capsys)
    assert [line["index"] for line in lines] == list(range(130))
    assert [line["answer"]["logit"] for line in lines] == [float(len(t)) for t in texts]
    assert lines[5]["name"].endswith("reviews.jsonl:6") and lines[5]["true_label"] == "pos"
    assert lines[0]["answer"]["future_field"] == {"x": 1}  # unknown fields pass through


def test_answers_keep_input_order_when_the_first_of_many_small_requests_is_answered_last(stub, tmp_path, capsys):
    texts, source = labelled_jsonl(tmp_path)
    slow = like_the_handler(by_text)
    stub.answer = lambda path, body: (
        (time.sleep(0.3) if body["instances"][0]["text"] == texts[0] else None) or slow(path, body)
    )
    assert main(["--url", stub.url, "--token", "k", "--jsonl", "--bulk", "8", "--concurrency", "4", str(source)]) == 0
    assert [line["answer"]["logit"] for line in jsonl_out(capsys)] == [float(len(t)) for t in texts]


def test_chunks_split_by_count_and_by_bytes():
    items = [Item("x" * 100) for _ in range(10)]
    assert [len(c) for c in chunks(items, 4)] == [4, 4, 2]
    assert [len(c) for c in chunks(items, 64, max_bytes=350)] == [3, 3, 3, 1]
    assert [len(c) for c in chunks([Item("y" * 1000), *items[:2]], 64, max_bytes=350)] == [1, 2]


def test_method_and_n_steps(stub, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--method", "exact", "--n-steps", "32", "x"])
    assert "takes no --n-steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--predict", "--n-steps", "32", "x"])
    assert parse_args(["--n-steps", "32", "x"]).options == {"method": "gausslegendre", "n_steps": 32}
    assert parse_args(["--method", "riemann_left", "--n-steps", "8", "x"]).options == {
        "method": "riemann_left",
        "n_steps": 8,
    }
    assert parse_args(["--method", "exact", "x"]).options == {"method": "exact"}
    assert parse_args(["x"]).options == {}
    stub.answer = like_the_handler(by_text)
    assert main(["--url", stub.url, "--token", "k", "--n-steps", "32", "--jsonl", "one", "two"]) == 0
    assert stub.seen[0][2] == {
        "instances": [
            {"text": "one", "method": "gausslegendre", "n_steps": 32},
            {"text": "two", "method": "gausslegendre", "n_steps": 32},
        ]
    }


def test_model_and_version_choose_the_path(stub, capsys):
    stub.answer = like_the_handler(by_text)
    assert main(["--url", stub.url, "--token", "k", "--model", "other", "--predict", "--jsonl", "a", "b"]) == 0
    assert [s[0] for s in stub.seen] == ["/v1/models/other:predict"]
    stub.seen.clear()
    # TorchServe's KServe routes take no version: a version goes as one plain request per review.
    assert main(["--url", stub.url, "--token", "k", "--version", "2.0", "--jsonl", "a", "b"]) == 0
    assert sorted(s[0] for s in stub.seen) == ["/explanations/imdb_sentiment/2.0"] * 2
    assert sorted(s[2]["text"] for s in stub.seen) == ["a", "b"]
    capsys.readouterr()
    stub.answer = (
        404,
        {"code": 404, "type": "ModelVersionNotFoundException", "message": "Model version: 2.0 does not exist"},
    )
    assert main(["--url", stub.url, "--token", "k", "--version", "2.0", "a"]) == 1
    assert "has no model imdb_sentiment version 2.0" in capsys.readouterr().err


def test_csv_jsonl_and_stdin_lines_inputs(tmp_path):
    table = tmp_path / "reviews.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review", "sentiment"])
        writer.writerows([[1, 'great, "truly"\non two lines', "positive"], [2, "awful", "0"], [3, "meh", ""]])
    got = read_items([str(table)], label=None)
    assert [(i.text, i.label) for i in got] == [
        ('great, "truly"\non two lines', "pos"),
        ("awful", "neg"),
        ("meh", None),
    ]
    assert got[1].name == f"{table}:4"  # the physical line: the first review spans two
    lines = tmp_path / "reviews.jsonl"
    lines.write_text('{"text": "fine", "label": 1}\n\n{"text": "dull"}\n')
    assert [(i.text, i.label, i.name) for i in read_items([str(lines)], label="neg")] == [
        ("fine", "pos", f"{lines}:1"),
        ("dull", "neg", f"{lines}:3"),
    ]
    many = read_items(["-"], stdin=io.StringIO("one\n\ntwo\n"), stdin_lines=True)
    assert [(i.text, i.name) for i in many] == [("one", "stdin:1"), ("two", "stdin:3")]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,maybe\n")
    with pytest.raises(InputError, match=r"bad.csv:2: label 'maybe'"):
        read_items([str(bad)])
    (tmp_path / "nocol.csv").write_text("body,label\nfine,pos\n")
    with pytest.raises(InputError, match="'text' or 'review' column"):
        read_items([str(tmp_path / "nocol.csv")])
    (tmp_path / "latin1.txt").write_bytes("très bon".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.txt: not UTF-8"):
        read_items([str(tmp_path / "latin1.txt")])
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(InputError, match="broken.jsonl:2: not JSON"):
        read_items([str(tmp_path / "broken.jsonl")])


def test_html_has_captums_columns_a_header_and_a_summary():
    rows = [
        (Item("great", "a", "pos"), {**explanation(["great"], [1.0]), "model_version": "1.0"}),
        (Item("awful", "b", "pos"), {**explanation(["awful"], [-1.0], "neg"), "model_version": "1.0"}),
        (Item("fine", "c", "neg"), {**explanation(["fine"], [1.0]), "model_version": "1.0"}),
        (Item("meh", "d", "neg"), {**explanation(["meh"], [-1.0], "neg"), "model_version": "1.0"}),
        (Item("dull", "e", "neg"), {**explanation(["dull"], [-1.0], "neg"), "model_version": "1.0"}),
        (Item(" ", "f", "neg"), {"code": 400, "type": "BadRequest", "message": "review text is empty"}),
        (Item("unlabelled", "g"), {**explanation(["unlabelled"], [0.5]), "model_version": "1.0"}),
    ]
    page = render_html(rows, Source("imdb_sentiment", "http://127.0.0.1:8080", "1.0"))
    tree = parse(page)
    text = " ".join(" ".join(tree.text).split())
    reviews = page[page.index('<table class="reviews">') :]
    assert re.findall(r"<th>([^<]*)</th>", reviews) == list(COLUMNS)
    assert COLUMNS[1:] == ("True Label", "Predicted Label", "Attribution Label", "Attribution Score", "Word Importance")
    assert "Model imdb_sentiment Version 1.0 Server http://127.0.0.1:8080" in text
    # 5 labelled answers: pos->pos 1, pos->neg 1, neg->pos 1, neg->neg 2; the error and the unlabelled one do not count.
    assert "7 review(s), 1 failed. Accuracy 60.0% (3 of 5 labelled reviews)" in text
    confusion = page[page.index('<table class="confusion">') : page.index('<table class="reviews">')]
    assert re.findall(r'<td class="num">(\d+)</td>', confusion) == ["2", "1", "1", "1"]  # true neg row, true pos row
    first = reviews[reviews.index("<tbody>") :].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", first)
    assert cells[3] == "pos" and cells[4].startswith("2.00")  # attribution label; sum of raw attributions
    unlabelled = render_html(rows[-1:], Source("imdb_sentiment", "in-process: x"))
    assert "No true labels" in unlabelled and "1.0" in unlabelled


def test_json_document_and_html_against_stub(stub, tmp_path, capsys):
    stub.answer = like_the_handler(by_text)
    report = tmp_path / "r.html"
    args = ["--url", stub.url, "--token", "k", "--json", "--html", str(report), "--label", "neg"]
    assert main([*args, "an awful film", "a fine film", HOSTILE]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["model"], document["server"], document["version"]) == ("imdb_sentiment", stub.url, None)
    assert document["summary"]["accuracy"] == pytest.approx(1 / 3) and document["summary"]["labelled"] == 3
    assert [r["answer"]["label"] for r in document["results"]] == ["neg", "pos", "pos"]
    page = report.read_text()
    parse(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert f"<dd>{stub.url}</dd>" in page and "<dd>1.0</dd>" in page  # server, and the answers' model_version


def test_predict_and_html_against_stub(stub, tmp_path, capsys):
    stub.answer = (
        200,
        {
            "predictions": [
                {
                    "label": "pos",
                    "score": 0.8,
                    "probabilities": {"neg": 0.2, "pos": 0.8},
                    "logit": 1.4,
                    "n_tokens": 1,
                    "truncated": False,
                    "unknown_tokens": 0,
                }
            ]
        },
    )
    report = tmp_path / "r.html"
    assert main(["--url", stub.url, "--token", "k", "--predict", "--html", str(report), HOSTILE]) == 0
    assert stub.seen[0][0] == "/v1/models/imdb_sentiment:predict"
    page = report.read_text()
    parse(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "wrote" in capsys.readouterr().out


# --- retries ------------------------------------------------------------------------------------


def failing(replies: list, then):
    """Answers ``replies`` in turn (a status, a (status, headers) pair, or DROP), then as ``then``."""
    queue = list(replies)

    def answer(path: str, body: dict):
        if not queue:
            return then(path, body)
        reply = queue.pop(0)
        if reply is DROP:
            return DROP
        status, headers = reply if isinstance(reply, tuple) else (reply, {})
        return status, {"code": status, "type": "InternalServerError", "message": f"Worker died ({status})"}, headers

    return answer


def test_connection_errors_and_5xx_are_retried_until_an_answer_with_growing_waits(stub, waits, capsys):
    stub.answer = failing([507, DROP, 500, 502, 503], like_the_handler(by_text))
    assert main(["--url", stub.url, "--token", "k", "--jsonl", "a fine film", "an awful film"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["answer"]["label"] for line in out.splitlines()] == ["pos", "neg"]
    assert len(stub.seen) == 6 and all(body == stub.seen[0][2] for _, _, body in stub.seen)  # the same body
    assert "5 retries (500: 1, 502: 1, 503: 1, 507: 1, connection error: 1)" in err
    assert "answered 507; retry 1 of 5 in" in err and "retry 5 of 5 in" in err
    # Exponential backoff with jitter: retry k waits within the upper half of 0.5 * 2^k seconds.
    assert len(waits) == 5
    for k, wait in enumerate(waits):
        assert 0.25 * 2**k <= wait <= 0.5 * 2**k, (k, wait)


def test_retry_after_is_honoured(stub, waits, capsys):
    stub.answer = failing([(503, {"Retry-After": "3"}), (503, {"Retry-After": "0"})], like_the_handler(by_text))
    assert main(["--url", stub.url, "--token", "k", "--jsonl", "a fine film"]) == 0
    assert waits[0] == 3.0  # the server's 3 s, longer than the first backoff (0.25-0.5 s)
    assert 0.5 <= waits[1] <= 1.0  # Retry-After 0 is shorter than the backoff: the backoff
    assert "2 retries (503: 2)" in capsys.readouterr().err
    policy, rng = RetryPolicy(), __import__("random").Random(0)
    assert policy.delay(0, 3600.0, rng) == 60.0  # a Retry-After is honoured up to a minute
    assert policy.delay(10, None, rng) <= 10.0  # and the backoff stops growing at 10 s


def test_retry_after_reads_seconds_and_http_dates():
    from email.utils import format_datetime

    assert retry_after("7") == 7.0 and retry_after(" 2 ") == 2.0
    assert retry_after(None) is None and retry_after("soon") is None and retry_after("-1") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    future = format_datetime(__import__("datetime").datetime.now(__import__("datetime").timezone.utc), usegmt=True)
    assert 0.0 <= retry_after(future) <= 1.0


@pytest.mark.parametrize("status", [400, 413, 429])
def test_a_4xx_is_never_retried(stub, waits, capsys, status):
    stub.answer = (status, {"code": status, "type": "BadRequest", "message": "review text is bad"})
    assert main(["--url", stub.url, "--token", "k", "--jsonl", "a fine film", "another"]) == 1
    assert len(stub.seen) == 1 and waits == []
    stub.seen.clear()
    assert main(["--url", stub.url, "--token", "k", "--jsonl", "--bulk", "1", "--concurrency", "1", "a", "b"]) == 1
    assert len(stub.seen) == 2 and waits == []  # one plain request per review, none sent again
    assert "retr" not in capsys.readouterr().err


def test_retries_are_bounded_and_then_the_error_is_the_answer(stub, waits, capsys):
    stub.answer = failing([503] * 100, like_the_handler(by_text))
    assert main(["--url", stub.url, "--token", "k", "--json", "--retries", "2", "a fine film", "another"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert len(stub.seen) == 3 and len(waits) == 2
    assert [r["answer"]["code"] for r in document["results"]] == [503, 503]
    assert (document["summary"]["retries"], document["summary"]["retried"]) == (2, {"503": 2})
    with pytest.raises(SystemExit):
        parse_args(["--retries", "-1", "x"])


def test_a_server_that_comes_back_is_reached_by_the_retries(waits, capsys, monkeypatch):
    """Connection refused (a restarting server): the second attempt finds it listening."""
    port, started = free_port(), []

    def start_on_first_wait(seconds: float) -> None:
        waits.append(seconds)
        if not started:
            server = start_stub(port)
            server.answer = like_the_handler(by_text)
            started.append(server)

    monkeypatch.setattr(transport, "pause", start_on_first_wait)
    try:
        assert main(["--url", f"http://127.0.0.1:{port}", "--token", "k", "--jsonl", "a fine film"]) == 0
    finally:
        for server in started:
            server.shutdown()
            server.server_close()
    out, err = capsys.readouterr()
    assert json.loads(out)["answer"]["label"] == "pos" and len(waits) == 1
    assert "Connection refused; retry 1 of 5" in err


def test_a_read_timeout_is_not_retried(stub, waits, capsys):
    stub.answer = lambda path, body: time.sleep(1.0) or (200, {})
    assert main(["--url", stub.url, "--token", "k", "--timeout", "0.2", "a fine film"]) == 1
    assert "no answer from" in capsys.readouterr().err and len(stub.seen) == 1 and waits == []
