"""In-process nftables: libnftables (shipped with the ``nftables`` package) through ctypes.

Per-sandbox rule batches and DNS-learned set elements are applied many times a second; forking
``nft`` costs ~1.5 ms a call where the library takes ~0.05 ms, and a batch is still one atomic
netlink transaction. The whole-table set-up at start-up keeps using the ``nft`` command."""

from __future__ import annotations

import ctypes
import json
import logging
import threading
import time
from typing import Any

log = logging.getLogger("atoll.nft")

_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    def __init__(self, commands: str, error: str) -> None:
        first = commands.strip().splitlines()[0] if commands.strip() else ""
        super().__init__(f"nft failed ({first!r}...): {error.strip()[-2000:]}")
        self.error = error


class Nft:
    """One libnftables context. Calls are serialised by a lock. A small update returns in well
    under a millisecond, but a slot's whole batch holds the lock for milliseconds (the kernel
    validates the ruleset and commits): call from a worker thread (``asyncio.to_thread``), so the
    event loop never waits on the lock."""

    def __init__(self, library: str = "libnftables.so.1") -> None:
        try:
            lib = ctypes.CDLL(library)
        except OSError as exc:
            raise RuntimeError(f"{library} is missing (apt-get install nftables)") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        self._lib = lib
        self._lock = threading.Lock()
        self._ctx = lib.nft_ctx_new(0)
        self._json_ctx = lib.nft_ctx_new(0)
        for ctx in (self._ctx, self._json_ctx):
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
        lib.nft_ctx_output_set_flags(self._json_ctx, _OUTPUT_JSON)

    def _run(self, ctx: int, commands: str) -> str:
        started = time.perf_counter()
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            out = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
        log.debug(
            "nft batch of %d lines rc=%d %.2fms",
            commands.count("\n") + 1,
            rc,
            (time.perf_counter() - started) * 1000,
        )
        if rc != 0:
            raise NftError(commands, err)
        return out

    def run(self, commands: str) -> str:
        """Apply ``commands`` (nft syntax, one per line) as one transaction."""
        return self._run(self._ctx, commands)

    def query(self, command: str) -> list[dict[str, Any]]:
        """A ``list`` command's objects, as libnftables' JSON."""
        out = self._run(self._json_ctx, command)
        items: list[dict[str, Any]] = json.loads(out).get("nftables", []) if out.strip() else []
        return items

    def close(self) -> None:
        with self._lock:
            for ctx in (self._ctx, self._json_ctx):
                if ctx:
                    self._lib.nft_ctx_free(ctx)
            self._ctx = self._json_ctx = 0
