"""A test server with nothing but the standard library, so it runs inside a sandbox (written
there with a heredoc) as well as on the host: ``python3 sandbox_app.py PORT [LOG] [HOST]``.

    GET  /hello           "hello from PORT[ TAG]" (TAG: the APP_TAG environment variable)
    ANY  /echo            JSON: method, path, headers, body length and SHA-256 (HEAD: headers only)
    GET  /bytes?n=&seed=  n pseudo-random bytes (random.Random(seed).randbytes); &chunked=1
    POST /upload          JSON: length and SHA-256 of the body (Content-Length or chunked)
    GET  /sse?n=&every=   n server-sent events, ``every`` seconds apart, each with its send time
    GET  /close           a body delimited by closing the connection (no length, no chunks)
    GET  /ws              WebSocket echo (text, binary, ping, close; the text "close-me" makes the
                          server close with 1000), written by hand

Every request line is appended to LOG (when given) before it is handled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LOG_LOCK = threading.Lock()
LOG_PATH = ""
PORT = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are separate writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _log(self) -> None:
        if LOG_PATH:
            with LOG_LOCK, open(LOG_PATH, "a") as log:
                log.write(f"{self.command} {self.path}\n")

    def _query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def _send(
        self, status: int, body: bytes, ctype: str = "application/json", head_only: bool = False
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _read_body(self) -> Iterator[bytes]:  # the request body, in pieces
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, 1 << 16))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                piece = self.rfile.read(min(left, 1 << 16))
                if not piece:
                    return
                left -= len(piece)
                yield piece

    def _route(self) -> None:
        self._log()
        path = urlsplit(self.path).path
        if path == "/hello":
            tag = os.environ.get("APP_TAG", "")
            text = f"hello from {PORT}" + (f" {tag}" if tag else "")
            self._send(200, text.encode(), "text/plain")
        elif path in ("/echo", "/upload"):
            digest, length = hashlib.sha256(), 0
            for piece in self._read_body():
                digest.update(piece)
                length += len(piece)
            info = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "length": length,
                "sha256": digest.hexdigest(),
            }
            self._send(200, json.dumps(info).encode(), head_only=self.command == "HEAD")
        elif path == "/bytes":
            self._bytes()
        elif path == "/sse":
            self._sse()
        elif path == "/close":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the end\n" * 1000)
            self.close_connection = True
        elif path == "/ws":
            self._websocket()
        else:
            self._send(404, b'{"error": "no such path"}')

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _route

    def _bytes(self) -> None:
        query = self._query()
        data = random.Random(int(query.get("seed", "1"))).randbytes(int(query.get("n", "1024")))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if query.get("chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 100_000):
                piece = data[i : i + 100_000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def _sse(self) -> None:
        query = self._query()
        count, every = int(query.get("n", "5")), float(query.get("every", "0.3"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(count):
            event = f"id: {i}\ndata: {i} {time.time():.6f}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            if i + 1 < count:
                time.sleep(every)
        self.wfile.write(b"0\r\n\r\n")

    # WebSocket (RFC 6455), echo only ------------------------------------------------------
    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            frame = self._read_frame()
            if frame is None:
                return
            fin_opcode, payload = frame
            opcode = fin_opcode & 0x0F
            if opcode == 0x8:  # close: answer it, then end the connection
                self._write_frame(0x88, payload[:2])
                return
            if opcode == 0x1 and payload == b"close-me":  # the server ends the conversation
                self._write_frame(0x88, struct.pack("!H", 1000))
                while (frame := self._read_frame()) is not None and frame[0] & 0x0F != 0x8:
                    pass
                return
            if opcode == 0x9:  # ping
                self._write_frame(0x8A, payload)
            elif opcode != 0xA:
                self._write_frame(fin_opcode, payload)

    def _read_exact(self, n: int) -> bytes | None:
        data = self.rfile.read(n)
        return data if len(data) == n else None

    def _read_frame(self) -> tuple[int, bytes] | None:
        head = self._read_exact(2)
        if head is None:
            return None
        length = head[1] & 0x7F
        if length == 126:
            raw = self._read_exact(2)
            if raw is None:
                return None
            length = struct.unpack("!H", raw)[0]
        elif length == 127:
            raw = self._read_exact(8)
            if raw is None:
                return None
            length = struct.unpack("!Q", raw)[0]
        mask = self._read_exact(4) if head[1] & 0x80 else b"\0\0\0\0"
        payload = self._read_exact(length) if length else b""
        if mask is None or payload is None:
            return None
        if mask != b"\0\0\0\0":
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head[0], payload

    def _write_frame(self, fin_opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", fin_opcode, n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", fin_opcode, 126, n)
        else:
            head = struct.pack("!BBQ", fin_opcode, 127, n)
        self.wfile.write(head + payload)
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main() -> None:
    global LOG_PATH, PORT
    PORT = port = int(sys.argv[1])
    LOG_PATH = sys.argv[2] if len(sys.argv) > 2 else ""
    host = sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"
    socketserver.TCPServer.allow_reuse_address = True
    Server((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
