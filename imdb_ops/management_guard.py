"""A guard in front of TorchServe's HTTP management API: the caps TorchServe 0.12 does not enforce.

usage: python scripts/management_guard.py --upstream http://127.0.0.1:8081 [--listen 127.0.0.1:8091]
                                          [--max-workers 8]

TorchServe 0.12's scale call accepts any worker count (ApiUtils checks only max_worker >=
min_worker; 500 workers were accepted in issue 11), and its workflow API ignores
enable_model_api=false. This proxy forwards every management call unchanged (the caller's token
included) except:
  * PUT /models/<name>[/<version>] with min_worker or max_worker above ``--max-workers``: 403;
  * any /workflows call that is not a GET: 403 (this project registers no workflows).
Expose the guard, not TorchServe's management port, wherever the management API must be reached
from outside the host (README, "Security"). TorchServe's gRPC management API (ScaleWorker) is not
guarded: keep grpc_management_address on loopback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}


WORKER_KEYS = ("min_worker", "max_worker")


def refusal(method: str, target: str, max_workers: int) -> str | None:
    """Why the guard refuses this call, or None to forward it.

    Each rule is its own function so a new cap is one more line here, not one more branch: the two
    rules match disjoint paths (/workflows, /models), so the order they are asked in changes nothing.
    """
    url = urlsplit(target)
    segments = [s for s in url.path.split("/") if s]
    return _workflow_refusal(method, segments) or _worker_cap_refusal(method, segments, url.query, max_workers)


def _workflow_refusal(method: str, segments: list[str]) -> str | None:
    """Only reads reach the workflow API: TorchServe 0.12 ignores enable_model_api=false there."""
    if segments[:1] == ["workflows"] and method != "GET":
        return "workflow registration is disabled on this server"
    return None


def _worker_cap_refusal(method: str, segments: list[str], query: str, max_workers: int) -> str | None:
    """A scale call (PUT /models/<name>[/<version>]) asking for more workers than the cap.

    A value that is not a plain digit string ("+9", "-1", "9x") is refused too, rather than guessing
    what count TorchServe's parser would make of it.
    """
    if method != "PUT" or segments[:1] != ["models"] or len(segments) not in (2, 3):
        return None
    values = parse_qs(query)
    for key in WORKER_KEYS:
        for value in values.get(key, []):
            if not value.isdigit() or int(value) > max_workers:
                return f"{key}={value[:20]} is above this server's cap of {max_workers} workers"
    return None


def handler_class(upstream: str, max_workers: int) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Guard(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            reason = refusal(self.command, self.path, max_workers)
            if reason:
                self._reply(403, json.dumps({"code": 403, "type": "Forbidden", "message": reason}).encode(), {})
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                answer = conn.getresponse()
                self._reply(answer.status, answer.read(), dict(answer.getheaders()))
            finally:
                conn.close()

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _handle

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
            pass  # TorchServe's access log records the calls that get through

    return Guard


def serve_guard(upstream: str, listen: tuple[str, int], max_workers: int) -> ThreadingHTTPServer:
    """Start the guard in a daemon thread; ``shutdown()`` the returned server to stop it."""
    server = ThreadingHTTPServer(listen, handler_class(upstream, max_workers))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", default="http://127.0.0.1:8081", help="TorchServe's management address")
    p.add_argument("--listen", default="127.0.0.1:8091")
    p.add_argument("--max-workers", type=int, default=8, help="most workers per model version")
    a = p.parse_args(argv)
    host, port = a.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), handler_class(a.upstream, a.max_workers))
    print(f"management guard on http://{a.listen} -> {a.upstream} (at most {a.max_workers} workers)")
    server.serve_forever()


if __name__ == "__main__":
    main()
