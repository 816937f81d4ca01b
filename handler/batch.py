"""One frontend batch on its way through the handler's stages (a module of its own: TorchServe
loads a handler module that defines exactly one class)."""

from __future__ import annotations

from dataclasses import dataclass, field

from handler.payload import Request, RequestError, Review
from handler.text import EncodedBatch

Answer = dict | RequestError | None


@dataclass
class Batch:
    """One frontend batch on its way through the stages; reviews are numbered across its requests."""

    started: float
    per_request: bool  # rows are requests (False under TorchServe's own KServe envelopes)
    requests: list[Request | RequestError]  # per row
    explain: list[bool]  # per row: its own "explain" header
    row_of: list[int] = field(default_factory=list)  # per review: its row
    answers: list[Answer] = field(default_factory=list)  # per review: answer or error
    reviews: dict[int, Review] = field(default_factory=dict)  # the reviews that reached the model
    encoded: EncodedBatch | None = None  # [R, T] ids of ``order``'s reviews
    order: list[int] = field(default_factory=list)  # encoded row -> review number
