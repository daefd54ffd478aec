"""A small S3 fault proxy on 127.0.0.1 in front of SeaweedFS, for the fault-injection suite.

Every request is forwarded as is (the Host header too, so SigV4 signatures still verify); a
schedule decides, per request number, whether to answer 503 without forwarding ("5xx"), to
forward and then answer 500 ("applied": the write happened, the client is told it failed), or
to stall past the client's read timeout ("timeout", then nothing is forwarded).
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("5xx", "applied", "timeout")


class FaultProxy:
    def __init__(self, upstream: str, schedule: Callable[[int, str, str], str | None], *, stall_s: float = 3.0):
        self.upstream = urlsplit(upstream)
        self.schedule = schedule
        self.stall_s = stall_s
        self.count = 0
        self.injected: list[tuple[int, str, str, str]] = []  # (n, method, path, fault)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    body = _read_chunked_verbatim(self.rfile)  # forwarded framing and trailers as they came
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.count += 1
                    n = proxy.count
                fault = proxy.schedule(n, self.command, self.path)
                if fault:
                    proxy.injected.append((n, self.command, self.path, fault))
                if fault == "timeout":
                    time.sleep(proxy.stall_s)
                    self.close_connection = True
                    return
                if fault == "5xx":
                    self._answer(503, {"Content-Type": "application/xml"}, _error("SlowDown", "injected 503"))
                    return
                status, headers, data = proxy._forward(self.command, self.path, dict(self.headers), body)
                if fault == "applied":
                    self._answer(500, {"Content-Type": "application/xml"}, _error("InternalError", "injected 500 after apply"))
                    return
                self._answer(status, headers, data)

            def _answer(self, status, headers, data):
                self.send_response(status)
                length = str(len(data))
                for k, v in headers.items():
                    if k.lower() == "content-length" and self.command == "HEAD":
                        length = v  # a HEAD answer carries the object's length, not its (empty) body's
                    elif k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            conn.request(method, path, body=body if body else None, headers=headers, encode_chunked=False)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, dict(resp.getheaders()), data
        finally:
            conn.close()


def _read_chunked_verbatim(rfile) -> bytes:
    raw = bytearray()
    while True:
        line = rfile.readline()
        raw += line
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers (aws-chunked puts the checksum here), then the blank line
                trailer = rfile.readline()
                raw += trailer
                if trailer in (b"\r\n", b"\n", b""):
                    return bytes(raw)
        raw += rfile.read(size + 2)


def _error(code: str, message: str) -> bytes:
    return (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message>"
            "</Error>").encode()


@contextlib.contextmanager
def fault_proxy(upstream: str, schedule, **kwargs) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, schedule, **kwargs)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
