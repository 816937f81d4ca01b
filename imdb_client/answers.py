"""Reading the server's answers: an answer is a prediction, an explanation, or an error object
{"code", "type", "message"}. Fields other branches add (model_version, ties, ...) pass through."""

from __future__ import annotations


def is_error(answer: dict) -> bool:
    return "label" not in answer


def error_line(answer: dict) -> str:
    """'error 400 BadRequest: review text is empty' for an error answer."""
    head = " ".join(str(answer[k]) for k in ("code", "type") if answer.get(k))
    return f"error {head}: {answer.get('message', answer)}"


def attribution_label(answer: dict) -> str:
    """The label the attributions explain, Captum's "Attribution Label". The target is the raw logit,
    the log-odds of the positive class: the last of ``probabilities`` (the handler's labels order
    neg, pos), "pos" when the answer has no probabilities."""
    labels = list(answer.get("probabilities") or ())
    return labels[-1] if labels else "pos"


def attribution_score(answer: dict) -> float:
    """Captum's "Attribution Score": the sum of the raw attributions (= logit - reference logit + delta)."""
    return float(sum(answer["attributions"]))
