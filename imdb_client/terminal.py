"""The terminal view of one answer (pure: returns rich Text; ``str(text.plain)`` is the plain form).

A header (the review's name), a summary line (label, calibrated P(pos), raw logit, and for
explanations the attribution sum and delta), the strongest words of each sign, and the review with
each word on a green (towards pos) or red (towards neg) background.
"""

from __future__ import annotations

import colorsys

from rich.color import Color
from rich.style import Style
from rich.text import Text

from imdb_client.answers import error_line, is_error
from imdb_client.colors import MARK_THRESHOLD, attribution_hsl
from imdb_client.items import Item


def attribution_style(value: float) -> Style:
    """Black text on the ``attribution_hsl`` background, or no style below MARK_THRESHOLD."""
    if abs(value) < MARK_THRESHOLD:
        return Style()
    h, s, light = attribution_hsl(value)
    r, g, b = colorsys.hls_to_rgb(h / 360, light / 100, s / 100)
    return Style(color="black", bgcolor=Color.from_rgb(r * 255, g * 255, b * 255))


def summary_line(answer: dict, item: Item | None = None) -> str:
    """One line: predicted label, P(pos), logit, and for explanations the attribution sum and delta."""
    if is_error(answer):
        return error_line(answer)
    parts = [f"{answer['label']}", f"P(pos)={answer['score']:.3f}", f"logit={answer['logit']:+.3f}"]
    if item is not None and item.label:
        parts.insert(0, f"true={item.label} {'✓' if item.label == answer['label'] else '✗'}")
    if "attributions" in answer:
        parts += [f"attribution sum={sum(answer['attributions']):+.3f}", f"delta={answer['delta']:.2e}"]
    notes = []
    if answer.get("truncated"):
        notes.append(f"truncated to {answer['n_tokens']} tokens")
    if answer.get("unknown_tokens"):
        notes.append(f"{answer['unknown_tokens']} unknown tokens")
    return "  ".join(parts) + (f"  ({', '.join(notes)})" if notes else "")


def top_words(answer: dict, k: int = 5) -> str:
    """'+ fantastic (+0.62), great (+0.31) | - boring (-0.40)': the k strongest words of each sign."""
    pairs = list(zip(answer["tokens"], answer["attributions_normalized"]))
    pos = sorted((p for p in pairs if p[1] > 0), key=lambda p: -p[1])[:k]
    neg = sorted((p for p in pairs if p[1] < 0), key=lambda p: p[1])[:k]
    fmt = lambda ps: ", ".join(f"{t} ({v:+.2f})" for t, v in ps) or "none"  # noqa: E731
    return f"+ {fmt(pos)} | - {fmt(neg)}"


def colored_tokens(answer: dict) -> Text:
    """The review's tokens, each styled by ``attribution_style`` of its normalized attribution."""
    text = Text()
    for i, (token, value) in enumerate(zip(answer["tokens"], answer["attributions_normalized"])):
        if i:
            text.append(" ")
        text.append(token, attribution_style(value))
    return text


def plain_tokens(answer: dict) -> str:
    """The tokens as plain text; a word at or above MARK_THRESHOLD is followed by its signed
    normalized attribution in brackets: 'a fantastic[+0.62] movie'."""
    words = []
    for token, value in zip(answer["tokens"], answer["attributions_normalized"]):
        words.append(f"{token}[{value:+.2f}]" if abs(value) >= MARK_THRESHOLD else token)
    return " ".join(words)


def render_terminal(answer: dict, item: Item | None = None, color: bool = True) -> Text:
    """Everything shown for one review; ``color=False`` gives the bracket annotation instead of styles."""
    out = Text()
    if item is not None and item.name:
        out.append(f"── {item.name}\n", Style(bold=True))
    out.append(summary_line(answer, item) + "\n")
    if "attributions_normalized" in answer:
        out.append("strongest: " + top_words(answer) + "\n")
        out.append(colored_tokens(answer) if color else Text(plain_tokens(answer)))
        out.append("\n")
    return out
