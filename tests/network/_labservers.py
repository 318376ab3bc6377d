"""The test hosts of the little internet, run inside the lab's network namespace (see _lab.py).

Every service listens on all of the namespace's addresses and says which one it was reached on:
- DNS on the lab resolver address (UDP and TCP :53): the test zone, queries logged;
- HTTP :80 and HTTPS :443 (test CA): ``hello <local address> host=<Host>``; HTTPS request
  headers are logged, never echoed;
- TCP :7 echo, UDP :7 echo (``udp <local address> <data>``), TCP :2222 server-speaks-first;
- TCP :9000 bulk: reads ``<n>\\n`` and sends n bytes; ``GET /bytes/<n>`` over HTTP(S) too
  (benchmarks).

    python -m tests.network._labservers CONFIG.json     (prints "ready" once listening)
"""

from __future__ import annotations

import asyncio
import json
import socket
import socketserver
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

CHUNK = memoryview(b"\0" * (1 << 20))


class Lab:
    def __init__(self, config: dict[str, Any]) -> None:
        self.records: dict[str, list[str]] = config["records"]
        self.log_path = Path(config["log"])
        self.lock = threading.Lock()
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(config["cert"], config["key"])
        self.dns_address: str = config["dns"]
        self.addresses: list[str] = config["addresses"]

    def log(self, **entry: Any) -> None:
        with self.lock, open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    # DNS --------------------------------------------------------------------------------------
    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        reply = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.log(kind="dns", name=name, type=dns.rdatatype.to_text(question.rdtype))
        if name not in self.records:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", "A", self.records[name]))
        return reply.to_wire()

    async def serve_dns(self) -> None:
        loop = asyncio.get_running_loop()
        lab = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = lab.answer(data)
                if reply:
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        await loop.create_datagram_endpoint(Udp, local_addr=(self.dns_address, 53))

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = lab.answer(await reader.readexactly(size))
            if reply:
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
            writer.close()

        await asyncio.start_server(tcp, self.dns_address, 53)

    # HTTP(S) ----------------------------------------------------------------------------------
    async def http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tls: bool) -> None:
        local = writer.get_extra_info("sockname")[0]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip()] = value.strip()
                length = int(headers.get("Content-Length", headers.get("content-length", "0")))
                body = await reader.readexactly(length) if length else b""
                if tls:
                    self.log(
                        kind="https", local=local, method=method, path=path, headers=headers, body=len(body)
                    )
                if path.startswith("/bytes/"):  # a bulk download (benchmarks)
                    remaining = int(path.rsplit("/", 1)[1])
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % remaining)
                    while remaining > 0:
                        writer.write(CHUNK[: min(remaining, len(CHUNK))])
                        remaining -= min(remaining, len(CHUNK))
                        await writer.drain()
                    continue
                host = headers.get("Host", headers.get("host", ""))
                text = f"hello {local} host={host} tls={tls}\n".encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Lab: 1\r\n\r\n%s" % (len(text), text)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def banner(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"banner {writer.get_extra_info('sockname')[0]}\n".encode())
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.readline(), 5)
            writer.write(b"got " + data)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        writer.close()

    async def serve(self) -> None:
        await self.serve_dns()
        await asyncio.start_server(lambda r, w: self.http(r, w, tls=False), "0.0.0.0", 80)
        await asyncio.start_server(lambda r, w: self.http(r, w, tls=True), "0.0.0.0", 443, ssl=self.tls)
        await asyncio.start_server(self.echo, "0.0.0.0", 7)
        await asyncio.start_server(self.banner, "0.0.0.0", 2222)
        loop = asyncio.get_running_loop()

        class UdpEcho(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                sock = self.transport.get_extra_info("socket")  # type: ignore[attr-defined]
                local = sock.getsockname()[0] if sock else "?"
                self.transport.sendto(b"udp %s %s" % (local.encode(), data), addr)  # type: ignore[attr-defined]

        for address in self.addresses:
            await loop.create_datagram_endpoint(UdpEcho, local_addr=(address, 7))


class Bulk(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        line = b""
        while not line.endswith(b"\n"):
            data = sock.recv(64)
            if not data:
                return
            line += data
        remaining = int(line)
        while remaining > 0:
            n = sock.send(CHUNK[: min(remaining, len(CHUNK))])
            remaining -= n


class BulkServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    lab = Lab(config)
    bulk = BulkServer(("0.0.0.0", 9000), Bulk)
    threading.Thread(target=bulk.serve_forever, daemon=True).start()

    async def run() -> None:
        await lab.serve()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent goes

    asyncio.run(run())


if __name__ == "__main__":
    main()
