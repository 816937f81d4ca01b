"""The one colour mapping of an attribution, shared by the terminal and the HTML report."""

from __future__ import annotations

# Below this |normalized attribution| a word is left unmarked: on a dark terminal a near-white
# background on every neutral word is noise, and in plain text a "+0.01" after each word is too.
MARK_THRESHOLD = 0.1


def attribution_hsl(value: float) -> tuple[int, int, int]:
    """(hue, saturation %, lightness %) for a normalized attribution, as Captum's visualize_text:
    green (hue 120) for positive, red (hue 0) for negative, darker for a larger |value|.
    Values are clipped to [-1, 1]."""
    v = max(-1.0, min(1.0, float(value)))
    if v > 0:
        return 120, 75, 100 - int(50 * v)
    return 0, 75, 100 - int(40 * -v)
