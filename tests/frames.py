"""A batch's replies as the worker sends them: encoded by TorchServe's own
``otf_message_handler.create_predict_response`` and parsed back from the frame."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from ts.protocol.otf_message_handler import create_predict_response


@dataclass
class Reply:
    request_id: str
    status: int
    phrase: bytes  # the reason phrase as written on the wire
    body: dict


def _take(frame: bytes, at: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("!i", frame, at)
    return frame[at + 4 : at + 4 + n], at + 4 + n


def encode_and_parse(out: list, context) -> list[Reply]:
    """Encode ``out`` for ``context``'s requests and read each reply back (status, phrase, JSON body)."""
    frame = bytes(create_predict_response(out, context.request_ids, "Prediction success", 200, context))
    (code,) = struct.unpack_from("!i", frame, 0)
    assert code == 200, frame[:64]
    _, at = _take(frame, 4)  # batch message
    replies = []
    for _ in context.request_ids:
        request_id, at = _take(frame, at)
        _, at = _take(frame, at)  # content type
        (status,) = struct.unpack_from("!i", frame, at)
        phrase, at = _take(frame, at + 4)
        (n_headers,) = struct.unpack_from("!i", frame, at)
        at += 4
        for _ in range(2 * n_headers):
            _, at = _take(frame, at)
        body, at = _take(frame, at)
        replies.append(Reply(request_id.decode(), status, phrase, json.loads(body)))
    assert struct.unpack_from("!i", frame, at) == (-1,), "frame does not end where TorchServe ends it"
    return replies
