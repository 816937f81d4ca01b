"""The KServe adapter in-process (kserve_server.model.SentimentModel, no HTTP): v1 dicts and v2
InferRequests in, dicts and InferResponses out, a request whose reviews all fail is KServe's
InvalidInput, and the device follows model-config.yaml's deviceType as TorchServe reads it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from kserve_server.model import SentimentModel, default_gpu
from tests.helpers import REPO, tiny_artifacts


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> SentimentModel:
    artifacts = tiny_artifacts(tmp_path_factory.mktemp("tiny"), embedding_dim=16, n_filters=8)
    loaded = SentimentModel(artifacts, REPO / "model-config.yaml", "3.1", name="imdb_sentiment")
    assert loaded.load() and loaded.ready
    return loaded


def test_v1_predict_and_explain_answer_each_instance(model: SentimentModel) -> None:
    predicted = asyncio.run(model.predict({"instances": ["Best film ever", {"text": "a horrible movie"}]}))
    explained = asyncio.run(model.explain({"instances": [{"text": "Best film ever", "n_steps": 8}]}))
    assert [p["model_version"] for p in predicted["predictions"]] == ["3.1", "3.1"]
    assert "attributions" in explained["explanations"][0]


def test_v2_answers_one_json_string_per_review_with_the_version(model: SentimentModel) -> None:
    request = InferRequest("imdb_sentiment", [InferInput("text", [2], "BYTES", ["Best film ever", "   "])], "r1")
    response = asyncio.run(model.predict(request))
    rest, _ = response.to_rest()
    good, bad = map(json.loads, rest["outputs"][0]["data"])
    assert (rest["id"], rest["model_version"], rest["outputs"][0]["name"]) == ("r1", "3.1", "answer")
    assert good["label"] in ("neg", "pos") and bad["code"] == 400  # the bad review inline, the request 200


def test_a_request_whose_reviews_all_fail_is_invalid_input(model: SentimentModel) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        asyncio.run(model.predict({"instances": ["   "]}))
    outputs = [RequestedOutput("text", {})]
    request = InferRequest(
        "imdb_sentiment", [InferInput("text", [1], "BYTES", ["fine"])], "r2", request_outputs=outputs
    )
    with pytest.raises(InvalidInput, match="unknown output"):
        asyncio.run(model.predict(request))


def test_the_device_follows_device_type_and_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_gpu({"deviceType": "gpu"}) == 0 and default_gpu({}) == 0
    assert default_gpu({"deviceType": "cpu"}) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_gpu({"deviceType": "gpu"}) is None


def test_the_metadata_declares_the_tensors(model: SentimentModel) -> None:
    assert model.get_input_types() == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert model.get_output_types() == [{"name": "answer", "datatype": "BYTES", "shape": [-1]}]
    assert isinstance(model.model_dir, Path)
