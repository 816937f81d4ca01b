"""Accuracy and confusion counts over the reviews whose true label is known.

Built incrementally (``add`` per answer), so a run of 25,000 reviews streamed to --jsonl keeps
counts, not answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imdb_client.answers import is_error
from imdb_client.items import LABELS, Item


@dataclass
class Summary:
    total: int = 0
    failed: int = 0
    # (true label, predicted label) -> count, over labelled reviews that got an answer.
    confusion: dict[tuple[str, str], int] = field(default_factory=dict)
    # Requests sent again, by cause ("507", "connection error", ...): the transport's count.
    retried: dict[str, int] = field(default_factory=dict)

    def add(self, item: Item, answer: dict) -> None:
        self.total += 1
        if is_error(answer):
            self.failed += 1
        elif item.label:
            key = (item.label, answer["label"])
            self.confusion[key] = self.confusion.get(key, 0) + 1

    @property
    def labelled(self) -> int:
        return sum(self.confusion.values())

    @property
    def correct(self) -> int:
        return sum(n for (true, predicted), n in self.confusion.items() if true == predicted)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def retries(self) -> int:
        return sum(self.retried.values())

    def labels(self) -> list[str]:
        """neg, pos, then any other label seen (in order of first appearance)."""
        seen = [label for pair in self.confusion for label in pair]
        return list(LABELS) + [label for label in dict.fromkeys(seen) if label not in LABELS]

    def as_dict(self) -> dict:
        return {
            "reviews": self.total,
            "failed": self.failed,
            "labelled": self.labelled,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "confusion": [{"true": t, "predicted": p, "count": n} for (t, p), n in sorted(self.confusion.items())],
            "retries": self.retries,
            "retried": dict(sorted(self.retried.items())),
        }

    def line(self) -> str:
        """'1000 reviews, 0 failed; accuracy 90.1% on 1000 labelled (true/predicted: neg/neg 450, ...);
        3 retries (507: 2, connection error: 1)', the retries only when there were any."""
        text = f"{self.total} review(s), {self.failed} failed"
        if self.accuracy is not None:
            cells = ", ".join(f"{t}/{p} {n}" for (t, p), n in sorted(self.confusion.items()))
            text += f"; accuracy {self.accuracy:.1%} on {self.labelled} labelled (true/predicted: {cells})"
        if self.retries:
            causes = ", ".join(f"{cause}: {n}" for cause, n in sorted(self.retried.items()))
            text += f"; {self.retries} {'retry' if self.retries == 1 else 'retries'} ({causes})"
        return text
