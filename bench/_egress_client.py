"""The measuring client of bench/egress.py: runs on the host (baseline), in a plain namespace
and, copied in, inside sandboxes. Standard library only; prints one JSON object.

    _egress_client.py connect HOST PORT N        N sequential connections, 1-byte echo each
    _egress_client.py bulk HOST PORT BYTES       one download of BYTES over raw TCP
    _egress_client.py tls-connect HOST PORT SNI N [verify]   N new HTTPS connections, one GET each
    _egress_client.py tls-bulk HOST PORT SNI BYTES [verify]  one HTTPS download of BYTES

A connection attempt without an answer within 1 s is made again and counted in "retries"; the
time measured is the successful attempt's.
"""

import json
import socket
import ssl
import sys
import time

BUF = bytearray(1 << 20)
RETRIES = [0]


def context(verify):
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def open_connection(host, port, timeout=30):
    for _ in range(5):
        start = time.perf_counter()
        try:
            sock = socket.create_connection((host, int(port)), timeout=1)
        except TimeoutError:
            RETRIES[0] += 1
            continue
        sock.settimeout(timeout)
        return sock, start
    raise TimeoutError(f"{host}:{port} unreachable")


def connect(host, port, n):
    times = []
    for _ in range(int(n)):
        sock, start = open_connection(host, port)
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
        times.append((time.perf_counter() - start) * 1000)
    return {"ms": times, "retries": RETRIES[0]}


def drain(sock, remaining):
    view = memoryview(BUF)
    while remaining > 0:
        n = sock.recv_into(view, min(len(BUF), remaining))
        if not n:
            raise ConnectionError("short read")
        remaining -= n


def bulk(host, port, size):
    size = int(size)
    sock, start = open_connection(host, port)
    with sock:
        sock.sendall(b"%d\n" % size)
        drain(sock, size)
    return {"seconds": time.perf_counter() - start, "bytes": size, "retries": RETRIES[0]}


def get(sock, sni, path):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("no response")
        head += chunk
    header, _, rest = head.partition(b"\r\n\r\n")
    assert header.startswith(b"HTTP/1.1 200"), header
    length = int(header.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    drain(sock, length - len(rest))


def tls_connect(host, port, sni, n, verify=""):
    ctx = context(verify == "verify")
    times = []
    for _ in range(int(n)):
        raw, start = open_connection(host, port)
        with raw, ctx.wrap_socket(raw, server_hostname=sni) as sock:
            get(sock, sni, "/")
        times.append((time.perf_counter() - start) * 1000)
    return {"ms": times, "retries": RETRIES[0]}


def tls_bulk(host, port, sni, size, verify=""):
    ctx = context(verify == "verify")
    raw, start = open_connection(host, port)
    with raw, ctx.wrap_socket(raw, server_hostname=sni) as sock:
        get(sock, sni, f"/bytes/{int(size)}")
    return {"seconds": time.perf_counter() - start, "bytes": int(size), "retries": RETRIES[0]}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    functions = {"connect": connect, "bulk": bulk, "tls-connect": tls_connect, "tls-bulk": tls_bulk}
    print(json.dumps(functions[command](*args)))
