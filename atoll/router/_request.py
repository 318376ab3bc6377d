"""The request side of one client connection: llhttp (httptools) callbacks that read each
request's head as far as routing needs, rewrite it for the sandbox (the API key, routing
headers and the cluster's internal hop headers removed, ``X-Forwarded-*`` added, an
absolute-form target made origin-form) and hand the connection an ``Exchange`` and then its body
pieces as they arrive (a chunked body re-chunked).

What to do with them (send, queue, answer an error) is the connection's (``_proxy``): this module
only parses and rewrites."""

from __future__ import annotations

from typing import Protocol

import httptools

from atoll._exceptions import APIError, BadRequestError
from atoll.router import _hop
from atoll.router._lookup import Destination
from atoll.router._names import ID_HEADER, PORT_HEADER, Names, Target

AUTH_HEADERS = (b"authorization", b"leap0-authorization")
# credentials for Atoll or for a proxy on the way: never the sandbox's to see
NEVER_FORWARDED = (b"proxy-authorization", b"x-api-key")
STRIPPED = frozenset((*AUTH_HEADERS, *NEVER_FORWARDED, ID_HEADER, PORT_HEADER, *_hop.HOP_HEADERS))


class Exchange:
    """One request and, once answered, its place in line for the response."""

    __slots__ = (
        "api_key", "body_done", "chunked", "dest", "error", "exclusive", "head", "is_head",
        "keep_alive", "pending", "sent", "target", "upgrade",
    )  # fmt: skip

    def __init__(self) -> None:
        self.target: Target | None = None
        self.api_key: str | None = None
        self.dest: Destination | None = None
        self.error: APIError | None = None
        self.head = b""
        self.pending: list[bytes] = []  # body received before the request could go out
        self.sent = False
        self.body_done = False
        self.chunked = False
        self.keep_alive = True
        self.is_head = False
        self.upgrade = False
        self.exclusive = False  # HEAD and upgrades travel alone: their responses end differently


def api_key(value: bytes | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value[:7].lower() == b"bearer ":
        value = value[7:].strip()
    return value.decode("latin-1") or None


class RequestSink(Protocol):
    """What the reader tells the connection (``_proxy.ClientConnection``)."""

    peer: bytes

    def request_head(self, ex: Exchange) -> None: ...

    def request_body(self, ex: Exchange, pieces: tuple[bytes, ...]) -> None: ...

    def request_end(self, ex: Exchange, pieces: tuple[bytes, ...]) -> None: ...


class RequestReader:
    """llhttp's callback object for one connection's requests (``parser`` feeds it)."""

    def __init__(
        self, sink: RequestSink, names: Names, proto_header: bytes, cluster_token: bytes | None = None
    ) -> None:
        self.sink = sink
        self.names = names
        self.proto_header = proto_header
        self.cluster_token = cluster_token  # hop headers are trusted only with it (``_hop``)
        self.parser = httptools.HttpRequestParser(self)
        self.current: Exchange | None = None  # between its head and the end of its body
        self._reset_head()

    def _reset_head(self) -> None:
        self._url: list[bytes] = []
        self._headers: list[bytes] = []
        self._trailers: list[bytes] = []
        self._host: bytes | None = None
        self._hosts = 0
        self._auth: bytes | None = None
        self._auth_alt: bytes | None = None
        self._sid: bytes | None = None
        self._port: bytes | None = None
        self._hop: dict[bytes, bytes] | None = None  # internal hop headers, by lowercase name
        self._chunked = False
        self._xff: bytes | None = None  # what the client sent; the router appends its peer
        self._xfp = False

    def on_message_begin(self) -> None:
        self._reset_head()

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if self.current is not None:  # trailers after a chunked body
            if lname not in STRIPPED:
                self._trailers.append(name + b": " + value + b"\r\n")
            return
        if lname in STRIPPED:
            if lname == b"authorization":
                self._auth = value
            elif lname == b"leap0-authorization":
                self._auth_alt = value
            elif lname == ID_HEADER:
                self._sid = value
            elif lname == PORT_HEADER:
                self._port = value
            elif lname in _hop.HOP_HEADERS:
                if self._hop is None:
                    self._hop = {}
                self._hop[lname] = value
            return
        if lname == b"host":
            self._host = value
            self._hosts += 1
        elif lname == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()
        elif lname == b"x-forwarded-for":
            self._xff = value if self._xff is None else self._xff + b", " + value
            return
        elif lname == b"x-forwarded-proto":
            self._xfp = True
        self._headers.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        parser = self.parser
        ex = Exchange()
        method = parser.get_method()
        ex.is_head = method == b"HEAD"
        ex.upgrade = parser.should_upgrade()
        ex.exclusive = ex.is_head or ex.upgrade
        ex.keep_alive = parser.should_keep_alive()
        ex.chunked = self._chunked
        ex.api_key = api_key(self._auth if self._auth is not None else self._auth_alt)
        url = b"".join(self._url)
        if method == b"CONNECT":
            ex.error = APIError("CONNECT is not supported by the sandbox router", status_code=405)
        elif self._hosts > 1:
            ex.error = BadRequestError("more than one Host header")
        else:
            try:
                url = self._origin_form(url)
                ex.target = self._target()
            except APIError as err:
                ex.error = err
        head = [method, b" ", url, b" HTTP/", parser.get_http_version().encode(), b"\r\n"]
        head += self._headers
        peer = self.sink.peer
        if self._xff is None:
            head.append(b"X-Forwarded-For: " + peer + b"\r\n")
        else:
            head.append(b"X-Forwarded-For: " + self._xff + b", " + peer + b"\r\n")
        if not self._xfp:
            head.append(self.proto_header)
        head.append(b"\r\n")
        ex.head = b"".join(head)
        self.current = ex
        self.sink.request_head(ex)

    def _target(self) -> Target:
        if self._hop is None:
            return self.names.target(self._host, self._sid, self._port)
        # another router of the cluster (or someone posing as one): routed by the hop headers
        # only when the cluster's token matches, else refused (401) before anything is sent
        hop = self._hop
        return _hop.trusted_target(
            self.cluster_token,
            token=hop.get(_hop.TOKEN_HEADER),
            sandbox_id=hop.get(_hop.SANDBOX_HEADER),
            org_id=hop.get(_hop.ORG_HEADER),
            port=hop.get(_hop.PORT_HEADER),
            presigned=hop.get(_hop.PRESIGNED_HEADER),
        )

    def _origin_form(self, url: bytes) -> bytes:
        """An absolute-form target (``http://host/path``) must name the host the ``Host`` header
        names (which routes the request); the sandbox gets the origin form (``/path``)."""
        if url[:7].lower() != b"http://" and url[:8].lower() != b"https://":
            return url
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise BadRequestError("invalid request target") from None
        authority = (parsed.host or b"") + (b":%d" % parsed.port if parsed.port else b"")
        if self._host is None or authority.lower() != self._host.strip().lower():
            raise BadRequestError("the request target's host and the Host header differ")
        path = parsed.path or b"/"
        return path + (b"?" + parsed.query if parsed.query else b"")

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is None or ex.error is not None:
            return
        if ex.chunked:
            self.sink.request_body(ex, (b"%x\r\n" % len(body), body, b"\r\n"))
        else:
            self.sink.request_body(ex, (body,))

    def on_message_complete(self) -> None:
        ex, self.current = self.current, None
        if ex is None:
            return
        ex.body_done = True
        last = (b"0\r\n", *self._trailers, b"\r\n") if ex.chunked and ex.error is None else ()
        self.sink.request_end(ex, last)
