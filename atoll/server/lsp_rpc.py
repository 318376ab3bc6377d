"""JSON-RPC 2.0 over one TCP connection to a language server's bridge (``Content-Length``
framing, as LSP speaks it on stdio).

One reader task per connection matches answers to requests by id; every request has a
deadline. Requests the server sends us (``workspace/configuration``, capability registration,
progress tokens) get a neutral answer at once, since some servers wait for one; notifications
(diagnostics, logs, progress) are counted and dropped, so nothing the server says can grow the
host's memory. When the connection ends (the server exited, crashed or was killed: the bridge
then closes it), every waiting request fails at once with the reason, and so does every later
one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from atoll._exceptions import APIError, ConflictError
from atoll._tasks import cancel_and_wait

log = logging.getLogger("atoll.lsp")

HEADER_MAX_BYTES = 8192
MESSAGE_MAX_BYTES = 64 << 20  # a completion list of a large project stays well below this
PENDING_MAX = 64  # requests waiting for an answer on one server


class LspGone(ConflictError):
    """The language server is no longer there (it exited, crashed, or its sandbox went away)."""


class LspTimeout(APIError):
    status_code = 504


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        self.name = name  # e.g. "python language server for /home/user/p", for messages
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._send_lock = asyncio.Lock()
        self.gone: str | None = None  # why the connection ended, once it has
        self.notifications = 0
        self.ended = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read_forever())

    # sending ------------------------------------------------------------------------------
    async def _send(self, message: dict[str, Any]) -> None:
        if self.gone is not None:
            raise LspGone(f"the {self.name} is not running: {self.gone}; start it again")
        async with self._send_lock:
            try:
                self._writer.write(frame(message))
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                self._end(f"connection lost ({exc})")
                raise LspGone(f"the {self.name} is not running: {self.gone}; start it again") from None

    async def notify(self, method: str, params: Any) -> None:
        await self._send({"jsonrpc": "2.0", "method": method, "params": params})

    async def request(self, method: str, params: Any, *, timeout_s: float) -> dict[str, Any]:
        """The server's whole answer (``{jsonrpc, id, result | error}``)."""
        if len(self._pending) >= PENDING_MAX:
            raise ConflictError(f"the {self.name} has {PENDING_MAX} requests waiting; retry later")
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            with contextlib.suppress(APIError):
                await self.notify("$/cancelRequest", {"id": request_id})
            raise LspTimeout(f"the {self.name} did not answer {method} within {timeout_s:g} s") from None
        finally:
            self._pending.pop(request_id, None)

    # receiving ----------------------------------------------------------------------------
    async def _read_message(self) -> dict[str, Any] | None:
        length: int | None = None
        size = 0
        while True:
            line = await self._reader.readline()
            if not line:
                return None
            size += len(line)
            if size > HEADER_MAX_BYTES:
                raise ValueError("header too long")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("ascii", "replace").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None or not 0 <= length <= MESSAGE_MAX_BYTES:
            raise ValueError(f"bad Content-Length {length}")
        message = json.loads(await self._reader.readexactly(length))
        if not isinstance(message, dict):
            raise ValueError("message is not a JSON object")
        return message

    async def _read_forever(self) -> None:
        reason = "it exited"
        try:
            while (message := await self._read_message()) is not None:
                await self._dispatch(message)
        except asyncio.IncompleteReadError:
            pass
        except (ValueError, UnicodeDecodeError) as exc:
            reason = f"it sent a malformed message ({exc})"
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost ({exc})"
        self._end(reason)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:  # an answer
            future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(message)
            return
        if "id" not in message:
            self.notifications += 1
            return
        result: Any = None
        if method == "workspace/configuration":
            items = (message.get("params") or {}).get("items") or []
            result = [None] * len(items) if isinstance(items, list) else []
        with contextlib.suppress(APIError):
            await self._send({"jsonrpc": "2.0", "id": message["id"], "result": result})

    # ending -------------------------------------------------------------------------------
    def _end(self, reason: str) -> None:
        if self.gone is None:
            self.gone = reason
            log.info("%s ended: %s", self.name, reason)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LspGone(f"the {self.name} is not running: {reason}; start it again"))
        self._writer.close()
        self.ended.set()

    async def finish(self, timeout_s: float) -> None:
        """Half-close and wait for the bridge to end the server and close its side."""
        if self.gone is None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), timeout_s)
        await self.close("stopped")

    async def close(self, reason: str) -> None:
        if self._task is not asyncio.current_task():
            await cancel_and_wait(self._task)
        self._end(reason)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 5)
