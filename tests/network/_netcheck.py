"""Runs inside a sandbox (copied there by the tests): one network probe, one JSON line out.

netcheck.py resolve NAME
netcheck.py tcp HOST PORT [SEND]            connect, send, read what comes back
netcheck.py udp HOST PORT                   send a datagram, wait for the echo
netcheck.py http HOST PORT HOSTHEADER       plain HTTP with that Host
netcheck.py tls HOST PORT SNI [PATH] [verify] [HEADER:VALUE ...]
                                            HTTPS with that SNI and Host; 'verify' checks the
                                            certificate against the sandbox's trust store
netcheck.py dns SERVER NAME                 a raw DNS query for NAME's A record to SERVER:53
netcheck.py secret B64                      does the (base64) string appear in files,
                                            environments or command lines?
"""

import base64
import json
import os
import socket
import ssl
import struct
import sys

TIMEOUT = 4


def out(ok, **data):
    print(json.dumps({"ok": ok, **data}))


def resolve(name):
    try:
        out(True, addresses=sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)}))
    except OSError as exc:
        out(False, error=str(exc))


def exchange(sock, request):
    if request:
        sock.sendall(request)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data and b"hello" in data:
            break
        if not data.startswith(b"HTTP") and b"\n" in data:
            break
    return data


def tcp(host, port, send=None):
    """Without SEND: did the connection open? With SEND: did anything come back?"""
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            if send is None and port != "2222":
                out(True, data="")
                return
            data = exchange(sock, (send + "\n").encode() if send else b"")
        out(bool(data), data=data.decode(errors="replace"))
    except OSError as exc:
        out(False, error=repr(exc))


def udp(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        try:
            sock.sendto(b"ping", (host, int(port)))
            data, _ = sock.recvfrom(2048)
            out(True, data=data.decode(errors="replace"))
        except OSError as exc:
            out(False, error=repr(exc))


def request_bytes(host_header, path="/", headers=()):
    lines = [f"GET {path} HTTP/1.1", f"Host: {host_header}", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode()


def http(host, port, host_header):
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            data = exchange(sock, request_bytes(host_header))
        out(b"200 OK" in data, data=data.decode(errors="replace"))
    except OSError as exc:
        out(False, error=repr(exc))


def tls(host, port, sni, path="/", *rest):
    verify = "verify" in rest
    headers = [h for h in rest if h != "verify"]
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname=None if sni == "-" else sni) as sock:
                issuer = dict(x[0] for x in sock.getpeercert()["issuer"]) if verify else {}
                data = exchange(sock, request_bytes(host if sni == "-" else sni, path, headers))
        out(b"200 OK" in data, data=data.decode(errors="replace"), issuer=issuer.get("commonName", ""))
    except (OSError, ssl.SSLError) as exc:
        out(False, error=repr(exc))


def dns(server, name):
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    query += struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        try:
            sock.sendto(query, (server, 53))
            data, _ = sock.recvfrom(4096)
        except OSError as exc:
            out(False, error=repr(exc))
            return
    rcode, answers = data[3] & 0x0F, struct.unpack("!H", data[6:8])[0]
    out(answers > 0, rcode=rcode, answers=answers)


def secret(encoded):
    needle = base64.b64decode(encoded)
    found = []
    for top in os.listdir("/"):
        if top in ("proc", "sys", "dev"):
            continue
        for root, _dirs, files in os.walk("/" + top):
            for name in files:
                path = os.path.join(root, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    with open(path, "rb") as f:
                        if needle in f.read():
                            found.append(path)
                except OSError:
                    pass
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        for what in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    if needle in f.read():
                        found.append(f"/proc/{pid}/{what}")
            except OSError:
                pass
    if needle in "\0".join(f"{k}={v}" for k, v in os.environ.items()).encode():
        found.append("own environment")
    out(not found, found=found)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    commands = {
        "resolve": resolve,
        "tcp": tcp,
        "udp": udp,
        "http": http,
        "tls": tls,
        "dns": dns,
        "secret": secret,
    }
    commands[command](*args)
