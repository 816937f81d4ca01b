"""The HTML report: one self-contained page (inline CSS only: no scripts, fonts, images or links)
with the table of Captum's ``visualize_text`` (True Label, Predicted Label, Attribution Label,
Attribution Score, Word Importance), a header naming the model, its version and the server, and a
summary (accuracy and confusion counts) where true labels are known. Every token, text, label,
name and message goes through html.escape, so a review containing markup is shown as text.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone

from imdb_client.answers import attribution_label, attribution_score, error_line, is_error
from imdb_client.colors import attribution_hsl
from imdb_client.items import Item
from imdb_client.summary import Summary

TITLE = "IMDB sentiment: which words drove the prediction"
COLUMNS = ("#", "True Label", "Predicted Label", "Attribution Label", "Attribution Score", "Word Importance")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
table.reviews { width: 100%; }
th, td { border: 1px solid #ccc; padding: 6px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.num { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.words { line-height: 1.9; }
dl.source { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dl.source dt { font-weight: bold; }
dl.source dd { margin: 0; font-family: ui-monospace, monospace; }
mark { color: #000; padding: 1px 2px; border-radius: 3px; }
.wrong { color: #b00; font-weight: bold; }
.small { color: #666; font-size: 85%; }
.error { color: #b00; }
""".strip()


@dataclass
class Source:
    """Who answered: shown in the report's header."""

    model: str
    server: str  # the inference address, or "in-process: <model dir>"
    version: str | None = None  # what was asked for (--version), None: the server's default


def answered_versions(answers: list[dict]) -> list[str]:
    """The distinct ``model_version`` values the answers carry, in order (servers that report it)."""
    return list(dict.fromkeys(str(a["model_version"]) for a in answers if a.get("model_version") is not None))


def _mark(token: str, value: float) -> str:
    h, s, light = attribution_hsl(value)
    return f'<mark style="background-color: hsl({h}, {s}%, {light}%)" title="{value:+.3f}">{html.escape(token)}</mark>'


def _row(index: int, item: Item, answer: dict) -> str:
    e = html.escape
    name = f'{index}<br><span class="small">{e(item.name)}</span>' if item.name else str(index)
    true = e(item.label) if item.label else "–"
    if is_error(answer):
        return (
            f'<tr><td>{name}</td><td>{true}</td><td colspan="3"></td>'
            f'<td class="error">{e(error_line(answer))}<br>{e(item.text)}</td></tr>'
        )
    wrong = ' class="wrong"' if item.label and item.label != answer["label"] else ""
    predicted = f"<b{wrong}>{e(answer['label'])}</b> ({answer['score']:.2f})"
    if "attributions" in answer:
        target = e(attribution_label(answer))
        score = f'{attribution_score(answer):.2f}<br><span class="small">delta {answer["delta"]:.1e}</span>'
        words = " ".join(_mark(t, v) for t, v in zip(answer["tokens"], answer["attributions_normalized"]))
    else:
        target, score, words = "–", "–", e(item.text)
    return (
        f'<tr><td>{name}</td><td>{true}</td><td class="num">{predicted}</td><td>{target}</td>'
        f'<td class="num">{score}</td><td class="words">{words}</td></tr>'
    )


def _header(source: Source, answers: list[dict]) -> str:
    e = html.escape
    reported = answered_versions(answers)
    if reported:
        version = ", ".join(reported)
    elif source.version:
        version = f"{source.version} (asked for; the answers do not report one)"
    else:
        version = "the server's default (the answers do not report one)"
    rows = (("Model", source.model), ("Version", version), ("Server", source.server))
    return '<dl class="source">' + "".join(f"<dt>{k}</dt><dd>{e(v)}</dd>" for k, v in rows) + "</dl>"


def _summary(summary: Summary) -> str:
    """Accuracy and a confusion table (rows: true label, columns: predicted) over labelled reviews."""
    head = f"<p>{summary.total} review(s), {summary.failed} failed."
    if summary.accuracy is None:
        return head + " No true labels, so no accuracy.</p>"
    labels = summary.labels()
    e = html.escape
    cells = "".join(f"<th>predicted {e(p)}</th>" for p in labels)
    body = "".join(
        f"<tr><th>true {e(t)}</th>"
        + "".join(f'<td class="num">{summary.confusion.get((t, p), 0)}</td>' for p in labels)
        + "</tr>"
        for t in labels
    )
    return (
        f'{head} Accuracy <b id="accuracy">{summary.accuracy:.1%}</b> '
        f"({summary.correct} of {summary.labelled} labelled reviews).</p>"
        f'<table class="confusion"><thead><tr><th></th>{cells}</tr></thead><tbody>{body}</tbody></table>'
    )


def render_html(rows: list[tuple[Item, dict]], source: Source, title: str = TITLE) -> str:
    """The whole page for ``rows`` of (item, answer)."""
    summary = Summary()
    for item, answer in rows:
        summary.add(item, answer)
    legend = " ".join(_mark(word, v) for word, v in (("negative", -1.0), ("neutral", 0.0), ("positive", 1.0)))
    body = "\n".join(_row(i, item, answer) for i, (item, answer) in enumerate(rows, 1))
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
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
{_header(source, [a for _, a in rows])}
<h2>Summary</h2>
{_summary(summary)}
<h2>Reviews</h2>
<p>Legend: {legend}</p>
<table class="reviews">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<p class="small">Predicted Label: the label and the server's P(label = pos) (calibrated where the
model records a temperature). Layer Integrated Gradients on the embedding layer, reference: all
&lt;pad&gt; tokens; the target is the raw logit, the log-odds of the Attribution Label, as in
Captum's tutorial. Attribution Score = sum of the attributions = logit(review) &minus;
logit(reference) + delta. Green words push towards <b>pos</b>, red ones towards <b>neg</b>; the
colour's strength is |attribution| divided by the review's L2 norm of attributions.
{len(rows)} review(s), {stamp}.</p>
</body>
</html>
"""
