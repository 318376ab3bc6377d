"""Running attack code inside a sandbox: Python scripts, shell lines and small binaries."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx

from tests._support import api

# ctypes preamble for raw syscalls: sc(nr, *args) -> (rc, errno name)
SYSCALL = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    rc = libc.syscall(nr, *args)
    return (rc, errno.errorcode.get(ctypes.get_errno(), "?") if rc < 0 else "OK")
"""


def py(http: httpx.Client, sid: str, code: str, *, timeout: float = 60) -> dict[str, Any]:
    """Run ``code`` with the sandbox's python3; returns the exec result."""
    return api.run(http, sid, f"python3 - <<'ATOLL_PY'\n{code}\nATOLL_PY", timeout=timeout)


def py_json(http: httpx.Client, sid: str, code: str, *, timeout: float = 60) -> Any:
    """Run ``code``, which prints one JSON document last; returns it."""
    result = py(http, sid, code, timeout=timeout)
    lines = result["stdout"].strip().splitlines()
    assert lines, f"no output: {result}"
    return json.loads(lines[-1])


def put_file(http: httpx.Client, sid: str, path: str, data: bytes, mode: str = "755") -> None:
    encoded = base64.b64encode(data).decode()
    command = f"echo {encoded} | base64 -d > {path} && chmod {mode} {path}"
    assert api.run(http, sid, command)["exit_code"] == 0


def elf32(code: bytes) -> bytes:
    """A static i386 ELF executable that runs ``code`` (machine code, ends with an exit)."""
    base, ehdr_size, phdr_size = 0x08048000, 52, 32
    entry = base + ehdr_size + phdr_size
    ident = b"\x7fELF\x01\x01\x01" + b"\x00" * 9
    ehdr = struct.pack(
        "<16sHHIIIIIHHHHHH", ident, 2, 3, 1, entry, ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 0, 0, 0
    )
    total = ehdr_size + phdr_size + len(code)
    return ehdr + struct.pack("<IIIIIIII", 1, 0, base, base, total, total, 5, 0x1000) + code


# i386 machine code: exit status = -(return value) & 0xff, so 253 means fd 3 (it worked),
# 38 ENOSYS, 97 EAFNOSUPPORT, 1 EPERM
_EXIT_NEG_EAX = "f7d889c3b801000000cd80"  # neg eax; mov ebx, eax; mov eax, 1; int 0x80
VSOCK_VIA_SOCKETCALL = bytes.fromhex(
    "6a00"
    "6a01"
    "6a28"
    "89e1"  # push 0 (proto), 1 (SOCK_STREAM), 40 (AF_VSOCK); ecx = args
    "bb01000000"
    "b866000000"
    "cd80" + _EXIT_NEG_EAX  # ebx = SYS_SOCKET; socketcall(2) is 102
)
VSOCK_VIA_SOCKET = bytes.fromhex(
    "bb28000000"
    "b901000000"
    "ba00000000"  # AF_VSOCK, SOCK_STREAM, 0
    "b867010000"
    "cd80" + _EXIT_NEG_EAX  # socket(2) is 359 on i386
)
