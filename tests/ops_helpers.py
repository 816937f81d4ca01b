"""Test helpers for the operator tests: a neighbour model, workflow archives and gRPC stubs.

The neighbour is what an operator serves beside imdb_sentiment: a TorchScript Linear(256, 2) with
TorchServe's BaseHandler (TorchScript loading, inference, postprocess). TorchServe's ready-made
handlers need torchvision or torchtext, which this project does not install, so the neighbour's
handler only adds ``preprocess``: the request body's byte histogram, [256] floats per request.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import torch

NEIGHBOUR_HANDLER = '''
import torch
from ts.torch_handler.base_handler import BaseHandler


class ByteHistogramHandler(BaseHandler):
    """BaseHandler with raw bytes in: each body becomes its byte histogram, [256] floats."""

    def preprocess(self, data):
        rows = []
        for request in data:
            body = bytes(request.get("data") or request.get("body") or b"")
            counts = torch.bincount(torch.frombuffer(bytearray(body + b"\\0"), dtype=torch.uint8).long(), minlength=256)
            rows.append(counts.float() / len(body + b"\\0"))
        return torch.stack(rows).to(self.device)  # [B, 256]
'''

NEIGHBOUR_CONFIG = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 20\nresponseTimeout: 30\n"


def _archiver() -> str:
    local = Path(sys.executable).with_name("torch-model-archiver")
    return str(local) if local.exists() else "torch-model-archiver"


def build_neighbour(store: Path, work: Path, name: str = "neighbour") -> Path:
    """neighbour.mar in ``store``: a TorchScript Linear(256, 2) and the byte-histogram handler."""
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.jit.script(torch.nn.Linear(256, 2)).save(str(work / "model.pt"))
    (work / "neighbour_handler.py").write_text(NEIGHBOUR_HANDLER)
    (work / "model-config.yaml").write_text(NEIGHBOUR_CONFIG)
    cmd = [_archiver(), "--model-name", name, "--version", "1.0", "--serialized-file", str(work / "model.pt")]
    cmd += ["--handler", str(work / "neighbour_handler.py"), "--config-file", str(work / "model-config.yaml")]
    cmd += ["--export-path", str(store), "--force"]
    subprocess.run(cmd, check=True, env={**os.environ, "TMPDIR": str(work)})
    return store / f"{name}.mar"


def build_war(path: Path, model_url: str) -> Path:
    """A workflow archive as TorchServe reads it (WAR-INF/MANIFEST.json, a spec, a handler) whose
    spec registers the model at ``model_url`` and whose handler would run as the server's user."""
    manifest = {
        "createdOn": "01/01/2026 00:00:00",
        "archiverVersion": "0.2.15",
        "workflow": {"workflowName": path.stem, "specFile": "spec.yaml", "handler": "wf_handler.py"},
    }
    spec = f"models:\n  min-workers: 1\n  max-workers: 1\n  m1:\n    url: {model_url}\ndag:\n  m1: [post]\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("WAR-INF/MANIFEST.json", json.dumps(manifest))
        z.writestr("spec.yaml", spec)
        z.writestr(
            "wf_handler.py",
            "import pathlib\npathlib.Path('/tmp/war_handler_ran').touch()\n\ndef post(data, context):\n    return data\n",
        )
    return path


def grpc_stubs(directory: Path) -> tuple[ModuleType, ModuleType]:
    """inference_pb2 and inference_pb2_grpc, generated from the inference.proto inside TorchServe's
    own frontend jar (the proto the server speaks), with grpcio-tools."""
    import grpc_tools
    import ts
    from grpc_tools import protoc

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(jar) as z:
        (directory / "inference.proto").write_bytes(z.read("inference.proto"))
    common = Path(importlib.import_module("google.rpc.status_pb2").__file__).parent.parent.parent
    args = [
        "protoc",
        f"-I{directory}",
        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
        f"-I{common}",
        f"--python_out={directory}",
        f"--grpc_python_out={directory}",
        str(directory / "inference.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on TorchServe's inference.proto")
    return _load(directory, "inference_pb2"), _load(directory, "inference_pb2_grpc")


def _load(directory: Path, name: str) -> ModuleType:
    """The generated module ``name`` from ``directory``, registered under its own name: the gRPC
    stubs import the messages module as ``inference_pb2``."""
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
