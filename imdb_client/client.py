"""usage: imdb-explain [--predict] [--html REPORT] [--label {pos,neg}] [--no-color] REVIEW|-|FILE|DIR ...

Show which words drove the IMDB sentiment prediction of a running TorchServe (model imdb_sentiment).

Each argument is a review: "-" reads one review from stdin, a file holds one review per line, a
folder holds .txt files (one review each), anything else is the review text itself. A file in a
folder named pos or neg (the aclImdb layout) has that true label; --label gives the others one.
By default each review is explained (/explanations: Layer Integrated Gradients); --predict asks
/predictions only.

Address and token: --url / IMDB_URL (default http://127.0.0.1:8080) and --token / IMDB_TOKEN, else
the inference key of --key-file (default ./key_file.json, which `make serve` writes).

Terminal: label, P(pos), delta, and the review with each word on a green (pushed towards pos) or
red (towards neg) background, stronger for a larger |normalized attribution|. --no-color (and any
non-terminal stdout) writes the same as plain text with signed values after the words that matter.
--html REPORT writes one self-contained HTML table for all reviews, like Captum's visualize_text.
"""

from __future__ import annotations

import argparse
import colorsys
import html
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.text import Text

DEFAULT_URL = "http://127.0.0.1:8080"
MODEL = "imdb_sentiment"
LABELS = ("neg", "pos")
# Below this |normalized attribution| a word is left unmarked: on a dark terminal a near-white
# background on every neutral word is noise, and in plain text a "+0.01" after each word is too.
MARK_THRESHOLD = 0.1


class ClientError(Exception):
    """A failure to report in one line on stderr; ``fatal`` ones (no server, bad token) stop the run.
    A non-fatal one carries the server's error ``answer`` ({"code", "type", "message"}), which takes
    the review's place in the output, as the in-process handler's error answers do."""

    def __init__(self, message: str, fatal: bool = True, answer: dict | None = None):
        super().__init__(message)
        self.fatal = fatal
        self.answer = answer


@dataclass
class Review:
    text: str
    name: str = ""
    label: str | None = None  # the true label, when known


@dataclass
class Endpoint:
    url: str
    token: str | None
    token_source: str  # where the token was read from, for the wrong-token message


# ----------------------------------------------------------------------------- colours (pure)


def attribution_hsl(value: float) -> tuple[int, int, int]:
    """(hue, saturation %, lightness %) for a normalized attribution, as Captum's visualize_text:
    green (hue 120) for positive, red (hue 0) for negative, darker for a larger |value|.
    Values are clipped to [-1, 1]; the HTML report and the terminal share this one mapping."""
    v = max(-1.0, min(1.0, float(value)))
    if v > 0:
        return 120, 75, 100 - int(50 * v)
    return 0, 75, 100 - int(40 * -v)


def attribution_style(value: float) -> Style:
    """The rich Style of one word: black text on the ``attribution_hsl`` background, or no style
    below MARK_THRESHOLD."""
    if abs(value) < MARK_THRESHOLD:
        return Style()
    h, s, light = attribution_hsl(value)
    r, g, b = colorsys.hls_to_rgb(h / 360, light / 100, s / 100)
    return Style(color="black", bgcolor=Color.from_rgb(r * 255, g * 255, b * 255))


# ----------------------------------------------------------------------------- terminal (pure)


def error_line(result: dict) -> str:
    """'error 400 BadRequest: review text is empty' for an error answer."""
    head = " ".join(str(result[k]) for k in ("code", "type") if result.get(k))
    return f"error {head}: {result.get('message', result)}"


def summary_line(result: dict, review: Review | None = None) -> str:
    """One line: predicted label, P(pos), and for explanations delta and the attribution sum."""
    if "label" not in result:
        return error_line(result)
    parts = [f"{result['label']}", f"P(pos)={result['score']:.3f}", f"logit={result['logit']:+.3f}"]
    if review is not None and review.label:
        parts.insert(0, f"true={review.label} {'✓' if review.label == result['label'] else '✗'}")
    if "attributions" in result:
        parts += [f"attribution sum={sum(result['attributions']):+.3f}", f"delta={result['delta']:.2e}"]
    notes = []
    if result.get("truncated"):
        notes.append(f"truncated to {result['n_tokens']} tokens")
    if result.get("unknown_tokens"):
        notes.append(f"{result['unknown_tokens']} unknown tokens")
    return "  ".join(parts) + (f"  ({', '.join(notes)})" if notes else "")


def top_words(result: dict, k: int = 5) -> str:
    """'+ fantastic (+0.62), great (+0.31) | - boring (-0.40)': the k strongest words of each sign."""
    pairs = list(zip(result["tokens"], result["attributions_normalized"]))
    pos = sorted((p for p in pairs if p[1] > 0), key=lambda p: -p[1])[:k]
    neg = sorted((p for p in pairs if p[1] < 0), key=lambda p: p[1])[:k]
    fmt = lambda ps: ", ".join(f"{t} ({v:+.2f})" for t, v in ps) or "none"  # noqa: E731
    return f"+ {fmt(pos)} | - {fmt(neg)}"


def colored_tokens(result: dict) -> Text:
    """The review's tokens, each styled by ``attribution_style`` of its normalized attribution."""
    text = Text()
    for i, (token, value) in enumerate(zip(result["tokens"], result["attributions_normalized"])):
        if i:
            text.append(" ")
        text.append(token, attribution_style(value))
    return text


def plain_tokens(result: dict) -> str:
    """The tokens as plain text; a word at or above MARK_THRESHOLD is followed by its signed
    normalized attribution in brackets: 'a fantastic[+0.62] movie'."""
    words = []
    for token, value in zip(result["tokens"], result["attributions_normalized"]):
        words.append(f"{token}[{value:+.2f}]" if abs(value) >= MARK_THRESHOLD else token)
    return " ".join(words)


def render_terminal(result: dict, review: Review | None = None, color: bool = True) -> Text:
    """Everything shown for one review: a header (name), the summary line, and for explanations
    the strongest words and the marked review. Pure: returns a rich Text (str(Text) is the plain
    form); ``color=False`` gives the bracket annotation instead of styles."""
    out = Text()
    if review is not None and review.name:
        out.append(f"── {review.name}\n", Style(bold=True))
    out.append(summary_line(result, review) + "\n")
    if "attributions_normalized" in result:
        out.append("strongest: " + top_words(result) + "\n")
        out.append(colored_tokens(result) if color else Text(plain_tokens(result)))
        out.append("\n")
    return out


# ----------------------------------------------------------------------------- HTML (pure)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: 6px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.num { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.words { line-height: 1.9; }
mark { color: #000; padding: 1px 2px; border-radius: 3px; }
.wrong { color: #b00; font-weight: bold; }
.small { color: #666; font-size: 85%; }
.error { color: #b00; }
""".strip()


def _mark(token: str, value: float) -> str:
    h, s, light = attribution_hsl(value)
    return f'<mark style="background-color: hsl({h}, {s}%, {light}%)" title="{value:+.3f}">{html.escape(token)}</mark>'


def _row(index: int, review: Review, result: dict) -> str:
    e = html.escape
    name = f'{index}<br><span class="small">{e(review.name)}</span>' if review.name else str(index)
    true = e(review.label) if review.label else "–"
    if "label" not in result:
        message = e(error_line(result))
        return (
            f'<tr><td>{name}</td><td>{true}</td><td colspan="2"></td>'
            f'<td class="error">{message}<br>{e(review.text)}</td></tr>'
        )
    wrong = ' class="wrong"' if review.label and review.label != result["label"] else ""
    predicted = f"<b{wrong}>{e(result['label'])}</b> ({result['score']:.2f})"
    if "attributions" in result:
        score = f'{sum(result["attributions"]):.2f}<br><span class="small">delta {result["delta"]:.1e}</span>'
        words = " ".join(_mark(t, v) for t, v in zip(result["tokens"], result["attributions_normalized"]))
    else:
        score, words = "–", e(review.text)
    return (
        f'<tr><td>{name}</td><td>{true}</td><td class="num">{predicted}</td>'
        f'<td class="num">{score}</td><td class="words">{words}</td></tr>'
    )


def render_html(
    rows: list[tuple[Review, dict]], title: str = "IMDB sentiment: which words drove the prediction"
) -> str:
    """One self-contained HTML page (inline CSS only: no scripts, fonts, images or links) with a
    table in the style of Captum's visualize_text. Every token, text, label and message goes
    through html.escape, so a review containing markup is shown as text."""
    legend = " ".join(_mark(word, v) for word, v in (("negative", -1.0), ("neutral", 0.0), ("positive", 1.0)))
    body = "\n".join(_row(i, review, result) for i, (review, result) in enumerate(rows, 1))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
{_CSS}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>Legend: {legend}</p>
<table>
<thead><tr><th>#</th><th>True label</th><th>Predicted label (P(pos))</th><th>Attribution score</th><th>Word importance</th></tr></thead>
<tbody>
{body}
</tbody>
</table>
<p class="small">Layer Integrated Gradients on the embedding layer, reference: all &lt;pad&gt; tokens.
Attribution score = sum of the attributions = logit(review) &minus; logit(reference) + delta.
Green words push towards <b>pos</b>, red ones towards <b>neg</b>; the colour's strength is
|attribution| divided by the review's L2 norm of attributions. {len(rows)} review(s), {stamp}.</p>
</body>
</html>
"""


# ----------------------------------------------------------------------------- inputs


def read_reviews(sources: list[str], label: str | None = None, stdin=None) -> list[Review]:
    """Reviews from the command-line arguments (see the module docstring for the forms)."""
    reviews = []
    for source in sources:
        path = Path(source)
        if source == "-":
            reviews.append(Review((stdin or sys.stdin).read(), "stdin", label))
        elif path.is_dir():
            files = sorted(path.rglob("*.txt"))
            if not files:
                raise ClientError(f"no .txt files in folder {path}")
            for f in files:
                folder_label = f.parent.name if f.parent.name in LABELS else label
                reviews.append(Review(f.read_text(encoding="utf-8"), str(f), folder_label))
        elif path.is_file():
            lines = [
                (n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()
            ]
            file_label = path.parent.name if path.parent.name in LABELS else label
            for n, line in lines:
                reviews.append(Review(line, f"{path}:{n}" if len(lines) > 1 else str(path), file_label))
        else:
            reviews.append(Review(source, "", label))
    return reviews


def resolve_endpoint(url: str | None, token: str | None, key_file: str) -> Endpoint:
    """Flags win over IMDB_URL / IMDB_TOKEN, which win over the key file's inference key.
    A missing key file is not an error: a server without token auth needs no token."""
    url = (url or os.environ.get("IMDB_URL") or DEFAULT_URL).rstrip("/")
    if token:
        return Endpoint(url, token, "--token")
    if os.environ.get("IMDB_TOKEN"):
        return Endpoint(url, os.environ["IMDB_TOKEN"], "$IMDB_TOKEN")
    path = Path(key_file).resolve()
    try:
        key = json.loads(path.read_text())["inference"]
    except FileNotFoundError:
        return Endpoint(
            url,
            None,
            f"nowhere: {path} does not exist (TorchServe writes it in its working "
            "directory when it starts; pass --key-file, --token or IMDB_TOKEN)",
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ClientError(f"cannot read the inference key from {path}: {err!r}") from None
    source = f"{path}"
    expires = key.get("expiration time")
    if expires:
        source += f" (expiration time {expires})"
    return Endpoint(url, key["key"], source)


# ----------------------------------------------------------------------------- HTTP


def request(
    endpoint: Endpoint, review: Review, explain: bool = True, options: dict | None = None, timeout: float = 120
) -> dict:
    """POST one review as JSON and return the answer; every failure becomes a ClientError whose
    message says what to do. Server down and a rejected token are fatal, other 4xx/5xx are not."""
    path = "explanations" if explain else "predictions"
    url = f"{endpoint.url}/{path}/{MODEL}"
    body = json.dumps({"text": review.text, **(options or {})}).encode()
    headers = {"Content-Type": "application/json"}
    if endpoint.token:
        headers["Authorization"] = f"Bearer {endpoint.token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        raise _http_error(err, endpoint) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            raise ClientError(
                f"no server at {endpoint.url}: connection refused. Is TorchServe running? "
                "Start it with `make serve` (or pass --url / IMDB_URL)."
            ) from None
        raise ClientError(f"cannot reach {endpoint.url}: {err.reason}") from None
    except (TimeoutError, ConnectionError) as err:
        raise ClientError(f"no answer from {endpoint.url} within {timeout:g}s: {err!r}") from None
    except ValueError as err:
        raise ClientError(f"{url} answered something that is not JSON: {err}") from None


def _http_error(err: urllib.error.HTTPError, endpoint: Endpoint) -> ClientError:
    raw = err.read().decode("utf-8", "replace")
    try:
        info = json.loads(raw)
        message, kind = str(info.get("message", raw)), str(info.get("type", ""))
    except (ValueError, AttributeError):
        message, kind = raw.strip() or err.reason, ""
    # TorchServe 0.12 answers a bad token with 400 InvalidKeyException "Token Authorization failed...".
    if err.code in (401, 403) or (err.code == 400 and ("token" in message.lower() or kind == "InvalidKeyException")):
        return ClientError(
            f"the server at {endpoint.url} rejected the token: it is wrong or expired "
            f"(token read from {endpoint.token_source}). Server said: {message}. A restarted "
            "TorchServe writes new keys to key_file.json in its working directory."
        )
    # 404 (model not registered) would fail every review alike; other codes may be this review's own.
    answer = {"code": err.code, "type": kind, "message": message}
    return ClientError(
        f"the server at {endpoint.url} answered {error_line(answer)}", fatal=err.code == 404, answer=answer
    )


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="imdb-explain", description=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("reviews", nargs="+", metavar="REVIEW|-|FILE|DIR")
    p.add_argument("--predict", action="store_true", help="prediction only (no explanation)")
    p.add_argument("--html", metavar="REPORT", help="write one self-contained HTML report of all reviews")
    p.add_argument("--label", choices=LABELS, help="true label of reviews not in a pos/ or neg/ folder")
    p.add_argument("--no-color", action="store_true", help="plain text: signed values instead of colours")
    p.add_argument("--json", action="store_true", help="print the server's JSON answers, one per line")
    p.add_argument("--url", help=f"inference address (default $IMDB_URL or {DEFAULT_URL})")
    p.add_argument("--token", help="inference token (default $IMDB_TOKEN or the key file's)")
    p.add_argument("--key-file", default="key_file.json", help="TorchServe's key file (default ./key_file.json)")
    p.add_argument("--n-steps", type=int, help="integration steps (the server's default otherwise)")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for each answer (default 120)")
    p.add_argument(
        "--local",
        metavar="MODEL_DIR",
        type=Path,
        help="no server: run the handler in this process on the artifacts in MODEL_DIR",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (1 when any review failed, with reasons on stderr)."""
    from tqdm import tqdm

    args = parse_args(argv)
    try:
        reviews = read_reviews(args.reviews, args.label)
        options = {"n_steps": args.n_steps} if args.n_steps and not args.predict else {}
        if args.local:
            from handler.inprocess import answer_texts  # torch and TorchServe only for --local

            results = answer_texts([r.text for r in reviews], args.local, explain=not args.predict)
        else:
            endpoint = resolve_endpoint(args.url, args.token, args.key_file)
            results = []
            for review in tqdm(
                reviews,
                desc="explaining" if not args.predict else "predicting",
                unit="review",
                disable=len(reviews) < 2,
                file=sys.stderr,
            ):
                try:
                    results.append(request(endpoint, review, not args.predict, options, args.timeout))
                except ClientError as e:
                    if e.fatal:
                        raise
                    results.append(e.answer)
    except ClientError as e:
        print(f"imdb-explain: error: {e}", file=sys.stderr)
        return 1
    failed = [(r, res) for r, res in zip(reviews, results) if "label" not in res]
    for review, res in failed:
        print(f"imdb-explain: {review.name or repr(review.text[:40])}: {error_line(res)}", file=sys.stderr)
    if args.html:
        Path(args.html).write_text(render_html(list(zip(reviews, results))), encoding="utf-8")
        print(f"wrote {args.html} ({len(reviews)} review(s), {len(failed)} failed)")
    elif args.json:
        for res in results:
            print(json.dumps(res))
    else:
        color = not args.no_color and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        out = Console(highlight=False, no_color=not color)
        for review, res in zip(reviews, results):
            if color:
                out.print(render_terminal(res, review, color=True))
            else:
                print(render_terminal(res, review, color=False).plain)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
