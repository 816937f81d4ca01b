"""The imdb-explain client without a server: rendering (HTML, terminal), inputs, and its error
messages against a free port and a tiny loopback HTTP stub."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imdb_client.client import (
    ClientError,
    Review,
    attribution_style,
    colored_tokens,
    main,
    plain_tokens,
    read_reviews,
    render_html,
    render_terminal,
    resolve_endpoint,
)

HOSTILE = "<script>alert(1)</script>"


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
        (Review("A fantastic film", "pos/1.txt", "pos"), explanation(["a", "fantastic", "film"], [0.1, 0.9, -0.4])),
        (Review("dull", "", None), {"label": "neg", "score": 0.2, "logit": -1.4}),  # --predict answer
        (Review(" ", "x", None), {"code": 400, "type": "BadRequest", "message": "review text is empty"}),
    ]
    page = render_html(rows)
    tree = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    tags = [t for t, _ in tree.tags]
    assert tags.count("tr") == 4 and "table" in tags  # header + 3 rows
    assert not {"script", "link", "img", "iframe", "object"} & set(tags)
    for _, attrs in tree.tags:
        assert "src" not in attrs and "href" not in attrs
    assert not re.search(r"@import|url\(|https?://", page)
    assert "review text is empty" in "".join(tree.text)


def test_html_escapes_hostile_tokens_text_and_names():
    hostile_tokens = [HOSTILE, '"><img src=x onerror=alert(2)>', "&amp;"]
    rows = [
        (Review(HOSTILE, f"dir/{HOSTILE}.txt", "pos"), explanation(hostile_tokens, [0.5, -0.5, 0.1])),
        (Review(HOSTILE, "", None), {"label": "neg", "score": 0.2, "logit": -1.4}),
        (Review(HOSTILE, "", None), {"code": 400, "message": HOSTILE}),
    ]
    page = render_html(rows)
    tree = parse(page)
    tags = {t for t, _ in tree.tags}
    assert "script" not in tags and "img" not in tags
    assert "<script" not in page and "<img" not in page
    text = "".join(tree.text)
    assert text.count(HOSTILE) >= 4  # token, name, predicted-only text, error message
    assert "&amp;" in text  # the literal token, shown as typed


def test_html_marks_sign_and_size_of_attributions():
    page = render_html([(Review("x"), explanation(["good", "meh", "bad"], [0.8, 0.2, -0.8]))])
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
    shown = render_terminal(result, Review("x", "r1", "neg"), color=False).plain
    assert "true=neg ✗" in shown and "pos" in shown and "delta=1.00e-05" in shown
    assert "fantastic (+0.90)" in shown and "bore (-0.40)" in shown


def test_read_reviews_forms(tmp_path):
    for label, name, text in (("pos", "1_9.txt", "great"), ("neg", "2_1.txt", "awful")):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / name).write_text(text)
    lines = tmp_path / "many.txt"
    lines.write_text("first review\n\nsecond review\n")
    got = read_reviews(
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
    with pytest.raises(ClientError, match="no .txt files"):
        read_reviews([str(tmp_path / "empty")])


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


def test_server_down_names_the_address_and_make_serve(capsys):
    port = free_port()
    assert main(["--url", f"http://127.0.0.1:{port}", "--token", "t", "a fine film"]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "connection refused" in err and "make serve" in err


@pytest.fixture
def stub():
    """A loopback HTTP server answering every POST with ``stub.answer`` = (status, JSON body)."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers.get("Authorization"), json.loads(body)))
            status, answer = server.answer(json.loads(body)) if callable(server.answer) else server.answer
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.seen, server.url = seen, f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


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
    assert len(stub.seen) == 1  # fatal: the second review is not sent
    assert stub.seen[0][:2] == ("/explanations/imdb_sentiment", "Bearer stale")


def test_other_4xx_shows_the_server_message_and_goes_on(stub, capsys, monkeypatch):
    monkeypatch.delenv("IMDB_TOKEN", raising=False)

    def answer(body):
        if body["text"] == "bad":
            return 400, {"code": 400, "type": "BadRequest", "message": "'n_steps' must be between 2 and 1024"}
        return 200, explanation(["a", "fantastic", "film"], [0.1, 0.9, -0.4])

    stub.answer = answer
    assert main(["--url", stub.url, "--token", "k", "--n-steps", "5000", "bad", "a fantastic film"]) == 1
    out, err = capsys.readouterr()
    assert "'n_steps' must be between 2 and 1024" in err and "400" in err
    assert "fantastic[+0.90]" in out  # the good review is still shown (stdout is not a terminal here)
    assert [s[2] for s in stub.seen] == [
        {"text": "bad", "n_steps": 5000},
        {"text": "a fantastic film", "n_steps": 5000},
    ]


def test_predict_and_html_against_stub(stub, tmp_path, capsys):
    stub.answer = (
        200,
        {
            "label": "pos",
            "score": 0.8,
            "probabilities": {"neg": 0.2, "pos": 0.8},
            "logit": 1.4,
            "n_tokens": 1,
            "truncated": False,
            "unknown_tokens": 0,
        },
    )
    report = tmp_path / "r.html"
    assert main(["--url", stub.url, "--token", "k", "--predict", "--html", str(report), HOSTILE]) == 0
    assert stub.seen[0][0] == "/predictions/imdb_sentiment"
    page = report.read_text()
    parse(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "wrote" in capsys.readouterr().out
