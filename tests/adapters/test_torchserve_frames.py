"""The TorchServe handler's replies on a fixed set, byte for byte, as the worker writes them.

The frames (status, reason phrase, content type, body) of every batch in ``BATCHES`` were recorded
from the handler before it was split into a server-neutral core and a thin TorchServe adapter
(``tests/data/torchserve_frames.json``, tiny random model of ``helpers.tiny_artifacts``); the split
must not change a byte. Only the floats' last digits may differ, where another CPU rounds a float32
result otherwise (``difference``). Rerecord only for an intended change of the answers, with the
reason in the commit: ``python -m tests.adapters.test_torchserve_frames --record``.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.protocol.otf_message_handler import create_predict_response

from handler.sentiment_handler import SentimentHandler
from tests.frames import encode_frame, parse_frame
from tests.helpers import REPO, tiny_artifacts

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "torchserve_frames.json"
V2 = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["A wonderful film", ""]}], "id": "q"}
# Each batch: (row as the worker hands it over, explain header). Plain, JSON, form, KServe v1/v2,
# options, errors of every kind, and TorchServe's own KServe envelope (rows without request ids).
BATCHES = [
    [
        (b"It was a fantastic performance !", True),
        (b"Best film ever", False),
        ({"text": "It was a horrible movie", "method": "gausslegendre", "n_steps": 8, "adaptive": False}, True),
        (b'{"text": "Such a great show!", "ties": "first"}', True),
    ],
    [
        (b"", True),
        (b"\xff\xfe", False),
        (b'{"text": "unterminated', True),
        ({"text": 5}, False),
        ({"text": "Best film ever", "colour": "red"}, True),
        ("x" * 100_001, False),
        (b"<br /><br />", True),
        ([1, 2], False),
    ],
    [
        ({"instances": [{"text": "Best film ever"}, "That is a terrible movie.", {"text": 5}]}, True),
        (V2, False),
        (V2, True),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, False),
        ({"instances": []}, True),
    ],
    [
        ({"text": bytearray(b"the plot was thin"), "n_steps": b"8", "method": b"gausslegendre"}, True),
        ({'{"text": "Best film ever"}': bytearray()}, False),
        ({}, True),
        (b" ".join([b"the movie was great and the plot was bad ."] * 60), True),
    ],
]
ENVELOPE = [{"text": "It was a fantastic performance !"}, {"name": "i", "datatype": "BYTES", "data": ["bad"]}]


def frames(model_dir: Path) -> list[str]:
    """Every batch's frame (base64), from a handler loaded the way a worker loads it."""
    metrics = MetricsCacheYamlImpl(config_file_path=str(REPO / "metrics.yaml"))
    metrics.initialize_cache()
    config = yaml.safe_load((REPO / "model-config.yaml").read_text())
    manifest = {"model": {"modelName": "imdb_sentiment", "modelVersion": "1.0"}}

    def context(explain: list[bool]) -> Context:
        ctx = Context(
            "imdb_sentiment", str(model_dir), manifest, 8, None, "0.12.0", metrics=metrics, model_yaml_config=config
        )
        ctx.request_processor = [RequestProcessor({"explain": str(e)}) for e in explain]
        ctx.request_ids = {i: f"id-{i}" for i in range(len(explain))}
        metrics.set_request_ids(ctx.request_ids)
        return ctx

    handler = SentimentHandler()
    handler.initialize(context([True]))
    out = []
    for batch in BATCHES:
        ctx = context([explain for _, explain in batch])
        frame = create_predict_response(
            handler.handle([{"body": row} for row, _ in batch], ctx), ctx.request_ids, "Prediction success", 200, ctx
        )
        out.append(base64.b64encode(bytes(frame)).decode())
    ctx = context([True])  # the envelope: more rows than requests, all of request 0
    frame = create_predict_response(handler.handle(ENVELOPE, ctx), ctx.request_ids, "Prediction success", 200, ctx)
    out.append(base64.b64encode(bytes(frame)).decode())
    return out


# A JSON number that json.loads reads as a float (a fraction or an exponent); integers are not.
FLOAT = re.compile(rb"-?\d+(?:\.\d+(?:e[-+]?\d+)?|e[-+]?\d+)")
# The answers are float32 computations written as Python floats: 1e-6 (times the value, past 1) is
# ~8 float32 ulps at 1.0. Another CPU's kernels round the last bit or two otherwise (an AMD EPYC:
# logits 1 ulp apart, deltas 3e-8); a change of the answers moves them by far more.
TOLERANCE = 1e-6


def difference(now: bytes, then: bytes) -> str | None:
    """None for equal frames, or frames whose only differences are float digits within TOLERANCE;
    else what differs. Both are cut along TorchServe's layout (``parse_frame``), so every status,
    header, request id and content type and every byte of a body outside its floats must be the
    same, and so must the number of floats: only a float's digits (and so the lengths written
    before the bodies) may differ."""
    if now == then:
        return None
    a, b = parse_frame(now), parse_frame(then)
    if (a.code, a.message, len(a.replies)) != (b.code, b.message, len(b.replies)):
        return f"batch: {(a.code, a.message, len(a.replies))} != {(b.code, b.message, len(b.replies))}"
    for k, (x, y) in enumerate(zip(a.replies, b.replies)):
        for name in ("request_id", "content_type", "status", "phrase", "headers"):
            if getattr(x, name) != getattr(y, name):
                return f"reply {k}: {name} {getattr(x, name)!r} != {getattr(y, name)!r}"
        if FLOAT.sub(b"F", x.body) != FLOAT.sub(b"F", y.body):
            return f"reply {k}: the body differs beyond its floats"
        for p, q in zip(FLOAT.findall(x.body), FLOAT.findall(y.body)):
            if abs(float(p) - float(q)) > TOLERANCE * max(1.0, abs(float(q))):
                return f"reply {k}: {p.decode()} != {q.decode()}"
    return None


def test_the_torchserve_replies_are_the_recorded_frames_but_for_float_rounding(tmp_path: Path) -> None:
    """Byte for byte where the CPU rounds as the recording's did; on another CPU (this test's first
    failure: an AMD EPYC, oneMKL's kernels) some float32 results differ in their last bit, so their
    digits, the lengths before their bodies and the frames' sizes differ: ``difference`` cuts the
    frames along TorchServe's layout and allows only the floats' digits to move, within TOLERANCE."""
    recorded = json.loads(GOLDEN.read_text())
    got = frames(tiny_artifacts(tmp_path, embedding_dim=16, n_filters=8))
    assert len(got) == len(recorded)
    for k, (now, then) in enumerate(zip(got, recorded)):
        assert difference(base64.b64decode(now), base64.b64decode(then)) is None, f"batch {k}"


def _changed(frame: bytes, reply: int = 0, body: Callable[[bytes], bytes] | None = None, **fields) -> bytes:
    """``frame`` written again with reply ``reply``'s body passed through ``body`` and ``fields`` set."""
    parsed = parse_frame(frame)
    r = parsed.replies[reply]
    if body is not None:
        r.body = body(r.body)
    for name, value in fields.items():
        setattr(r, name, value)
    return encode_frame(parsed)


def _first_float(to: Callable[[float], float]) -> Callable[[bytes], bytes]:
    """A body change: its first float x written as ``to(x)``."""
    return lambda body: FLOAT.sub(lambda m: repr(to(float(m[0]))).encode(), body, count=1)


def test_the_comparison_lets_only_float_rounding_through() -> None:
    """``difference`` on the recorded frames, changed: a float's last digits pass; a float moved by
    1e-5 or written as an integer, a float more, a word of text, a status, a header or a request
    id do not; and the layout's cut covers every byte (cut and written again, each frame is itself)."""
    recorded = [base64.b64decode(f) for f in json.loads(GOLDEN.read_text())]
    assert [encode_frame(parse_frame(f)) for f in recorded] == recorded
    frame = recorded[0]
    rounded = _changed(frame, body=_first_float(lambda x: x + 3e-8))
    assert rounded != frame and difference(rounded, frame) is None
    for other in (
        _changed(frame, body=_first_float(lambda x: x + 1e-5)),
        _changed(frame, body=_first_float(int)),
        _changed(frame, body=lambda b: b.replace(b"],", b",0.0],", 1)),
        _changed(frame, body=lambda b: b.replace(b'"ties":"split"', b'"ties":"first"')),
        _changed(frame, status=400),
        _changed(frame, headers=[]),
        _changed(frame, reply=1, request_id=b"id-9"),
    ):
        assert difference(other, frame) is not None
    with pytest.raises(ValueError):
        parse_frame(frame[:-4])  # no end marker


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python -m tests.adapters.test_torchserve_frames --record")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(frames(tiny_artifacts(Path(d), embedding_dim=16, n_filters=8)), indent=0) + "\n")
    print(f"recorded {GOLDEN}")
