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


@dataclass
class WireReply:
    """One reply's fields as the frame holds them, nothing decoded."""

    request_id: bytes
    content_type: bytes
    status: int
    phrase: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class Frame:
    code: int
    message: bytes
    replies: list[WireReply]


def _int(frame: bytes, at: int) -> tuple[int, int]:
    if at + 4 > len(frame):
        raise ValueError(f"frame ends at {len(frame)} inside an integer at {at}")
    return struct.unpack_from("!i", frame, at)[0], at + 4


def _take(frame: bytes, at: int) -> tuple[bytes, int]:
    n, at = _int(frame, at)
    if n < 0 or at + n > len(frame):
        raise ValueError(f"field of length {n} at {at - 4} does not fit the frame ({len(frame)} bytes)")
    return frame[at : at + n], at + n


def parse_frame(frame: bytes) -> Frame:
    """The frame cut along ``create_predict_response``'s layout: the batch's code and message, then
    per reply its request id, content type, status, reason phrase, headers (a count, then names and
    values) and body, then the end marker -1 as the frame's last bytes. ValueError otherwise."""
    code, at = _int(frame, 0)
    message, at = _take(frame, at)
    replies = []
    while _int(frame, at)[0] != -1:
        request_id, at = _take(frame, at)
        content_type, at = _take(frame, at)
        status, at = _int(frame, at)
        phrase, at = _take(frame, at)
        n_headers, at = _int(frame, at)
        headers = []
        for _ in range(n_headers):
            name, at = _take(frame, at)
            value, at = _take(frame, at)
            headers.append((name, value))
        body, at = _take(frame, at)
        replies.append(WireReply(request_id, content_type, status, phrase, headers, body))
    end, at = _int(frame, at)
    if end != -1 or at != len(frame):
        raise ValueError("the frame does not end where TorchServe ends it (-1, then nothing)")
    return Frame(code, message, replies)


def encode_frame(frame: Frame) -> bytes:
    """``parse_frame``'s inverse: the bytes ``create_predict_response`` writes for ``frame``."""

    def field(value: bytes) -> bytes:
        return struct.pack("!i", len(value)) + value

    out = struct.pack("!i", frame.code) + field(frame.message)
    for r in frame.replies:
        out += field(r.request_id) + field(r.content_type) + struct.pack("!i", r.status) + field(r.phrase)
        out += struct.pack("!i", len(r.headers)) + b"".join(field(name) + field(value) for name, value in r.headers)
        out += field(r.body)
    return out + struct.pack("!i", -1)


def encode_and_parse(out: list, context) -> list[Reply]:
    """Encode ``out`` for ``context``'s requests and read each reply back (status, phrase, JSON body)."""
    frame = parse_frame(bytes(create_predict_response(out, context.request_ids, "Prediction success", 200, context)))
    assert frame.code == 200, frame
    assert len(frame.replies) == len(context.request_ids)
    return [Reply(r.request_id.decode(), r.status, r.phrase, json.loads(r.body)) for r in frame.replies]
