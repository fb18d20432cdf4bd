"""A real S3 endpoint on 127.0.0.1 for tests: moto's server, optionally behind a
small forwarding proxy that injects faults for chosen keys.

The proxy is plain HTTP on loopback: requests for keys it was told about get
an S3 error response (503 SlowDown a few times, or 403 AccessDenied always);
everything else is forwarded to moto untouched.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from moto.server import ThreadedMotoServer

S3_ERROR = "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{code}</Message></Error>"


class FaultProxy:
    """Forward to ``upstream``; ``fail(key, status, times)`` injects errors for a key."""

    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.faults: dict[str, list] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue for uploads

            def log_message(self, *args):
                pass

            def _handle(self):
                path = urlsplit(self.path).path
                with proxy.lock:
                    proxy.hits[path] = proxy.hits.get(path, 0) + 1
                    fault = proxy.faults.get(path)
                    inject = fault is not None and (fault[1] is None or fault[1] > 0)
                    if inject and fault[1] is not None:
                        fault[1] -= 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if inject:
                    status = fault[0]
                    payload = S3_ERROR.format(code="SlowDown" if status == 503 else "AccessDenied").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(key, value)
                # HEAD answers carry the object's length, not the (empty) body's.
                length = response.getheader("Content-Length") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, key_path: str, status: int, times: int | None) -> None:
        """Answer requests for ``/bucket/key`` with ``status``: ``times`` times, or always (None)."""
        with self.lock:
            self.faults[key_path] = [status, times]

    def start(self) -> "FaultProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class S3Endpoint:
    """moto's S3 server on 127.0.0.1 and a fault proxy in front of it."""

    def __init__(self):
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def start(self) -> "S3Endpoint":
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.direct = f"http://{host}:{port}"
        self.proxy = FaultProxy(host, port).start()
        return self

    def stop(self) -> None:
        self.proxy.stop()
        self.moto.stop()
