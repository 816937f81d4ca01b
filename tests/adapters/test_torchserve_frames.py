"""The TorchServe handler's replies on a fixed set, byte for byte, as the worker writes them.

The frames (status, reason phrase, content type, body) of every batch in ``BATCHES`` were recorded
from the handler before it was split into a server-neutral core and a thin TorchServe adapter
(``tests/data/torchserve_frames.json``, tiny random model of ``helpers.tiny_artifacts``); the split
must not change a byte. Rerecord only for an intended change of the answers, with the reason in the
commit: ``python tests/test_torchserve_frames.py --record``.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
from pathlib import Path

import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.protocol.otf_message_handler import create_predict_response

from handler.sentiment_handler import SentimentHandler
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


FLOAT = re.compile(rb"-?\d+\.\d+(?:e[-+]?\d+)?")


def fields(frame: bytes) -> list[bytes]:
    """The frame cut into its length-prefixed fields and integers, in order (TorchServe's layout)."""
    out, at = [frame[:4]], 4
    while at < len(frame):
        (n,) = struct.unpack_from("!i", frame, at)
        if n < 0 or at + 4 + n > len(frame) or n > 10_000_000:
            out.append(frame[at : at + 4])  # a status code, a header count or the end marker
            at += 4
            continue
        out.append(frame[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def same_but_rounding(now: bytes, then: bytes) -> bool:
    """Equal frames, or frames whose only differences are float digits within 1e-6 (another CPU's
    rounding): every other byte, the fields' order and the number of floats must match."""
    if now == then:
        return True
    a, b = fields(now), fields(then)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if FLOAT.sub(b"F", x) != FLOAT.sub(b"F", y):
            return False
        fx, fy = [float(m) for m in FLOAT.findall(x)], [float(m) for m in FLOAT.findall(y)]
        if any(abs(p - q) > 1e-6 for p, q in zip(fx, fy)):
            return False
    return True


def test_the_torchserve_replies_are_byte_identical_to_the_recorded_frames(tmp_path: Path) -> None:
    recorded = json.loads(GOLDEN.read_text())
    got = frames(tiny_artifacts(tmp_path, embedding_dim=16, n_filters=8))
    assert len(got) == len(recorded)
    for k, (now, then) in enumerate(zip(got, recorded)):
        assert same_but_rounding(base64.b64decode(now), base64.b64decode(then)), f"batch {k} differs"


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_torchserve_frames.py --record")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(frames(tiny_artifacts(Path(d), embedding_dim=16, n_filters=8)), indent=0) + "\n")
    print(f"recorded {GOLDEN}")
