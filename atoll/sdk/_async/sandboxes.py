"""The sandboxes client: create, inspect, list, pause, stop, start and delete sandboxes.

The contract is /work/shared/spec/sandboxes-client.md. Every method checks its arguments before
any request (``_validation``), sends one request through the transport, and parses the answer
(``models``); the optional factory turns the raw data into the object handed to the user.
"""

from __future__ import annotations

import os
import ssl
import warnings
from typing import Generic, cast, overload

from atoll._exceptions import AtollError, InvalidArgument
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._config import (
    DEFAULT_SANDBOX_SCHEME,
    SANDBOX_SCHEMES,
    SandboxScheme,
    check_timeout,
    resolve_sandbox_domain,
    resolve_sandbox_scheme,
)
from atoll.sdk._validation import (
    DEFAULT_MEMORY_MIB,
    DEFAULT_TEMPLATE_NAME,
    DEFAULT_TIMEOUT_MIN,
    DEFAULT_VCPU,
    check_env_vars,
    check_port,
    create_body,
    list_params,
    otel_env_vars,
    sandbox_id,
    sandbox_path,
)
from atoll.sdk.models import (
    NetworkPolicyDict,
    SandboxData,
    SandboxFactory,
    SandboxList,
    SandboxRef,
    SandboxState,
    SandboxStatus,
    SandboxT,
    json_object,
)

SCHEME_HTTP_TIMEOUT = 10.0  # asking the server for its sandbox URL scheme


class AsyncSandboxesClient(Generic[SandboxT]):
    """Sandboxes are isolated execution environments with their own compute, filesystem and network.

    Without a ``sandbox_factory`` the methods return the raw ``SandboxData`` / ``SandboxStatus``;
    with one, whatever the factory makes of them (the top-level client makes ``Sandbox`` handles).

    ``sandbox_scheme=None`` means the scheme the server announces: asked once (``GET
    /v1/health``), when a call first hands out a sandbox, or by ``sandbox_scheme()``; until
    then, or when the server does not say, sandbox URLs use the default (``https``).
    """

    @overload
    def __init__(
        self: AsyncSandboxesClient[SandboxData | SandboxStatus],
        transport: AsyncTransport,
        *,
        sandbox_domain: str | None = None,
        sandbox_factory: None = None,
        sandbox_scheme: str | None = DEFAULT_SANDBOX_SCHEME,
    ) -> None: ...

    @overload
    def __init__(
        self,
        transport: AsyncTransport,
        *,
        sandbox_domain: str | None = None,
        sandbox_factory: SandboxFactory[SandboxData | SandboxStatus, SandboxT],
        sandbox_scheme: str | None = DEFAULT_SANDBOX_SCHEME,
    ) -> None: ...

    def __init__(
        self,
        transport: AsyncTransport,
        *,
        sandbox_domain: str | None = None,
        sandbox_factory: SandboxFactory[SandboxData | SandboxStatus, SandboxT] | None = None,
        sandbox_scheme: str | None = DEFAULT_SANDBOX_SCHEME,
    ) -> None:
        self._transport = transport
        # None means "not given": take the environment or the default. An explicit "" stays empty
        # and makes invoke_url fail loudly instead of pointing somewhere unexpected.
        self._sandbox_domain = (
            resolve_sandbox_domain(None) if sandbox_domain is None else sandbox_domain.strip().strip("/")
        )
        self._sandbox_scheme: SandboxScheme = resolve_sandbox_scheme(sandbox_scheme)
        self._scheme_known = sandbox_scheme is not None  # else: ask the server, once
        self._factory = sandbox_factory

    def _wrap(self, data: SandboxData | SandboxStatus) -> SandboxT:
        if self._factory is None:
            # Only reachable through the first __init__ overload, where SandboxT is the raw data.
            return cast(SandboxT, data)
        return self._factory(data)

    async def _learn_scheme(self, http_timeout: float | None) -> None:
        # called after every other argument check (http_timeout is the transport's): bad input
        # sends nothing, not even this
        if not self._scheme_known:
            if http_timeout is not None:
                check_timeout("http_timeout", http_timeout)
            await self.sandbox_scheme()

    async def sandbox_scheme(self) -> SandboxScheme:
        """The scheme of sandbox URLs: the configured one, else the one the server announces
        (asked on the first call only; the default when the server cannot be asked or does not say)."""
        if not self._scheme_known:
            announced = await self._announced_scheme()
            self._scheme_known = True
            if announced is not None:
                self._sandbox_scheme = announced
        return self._sandbox_scheme

    async def _announced_scheme(self) -> SandboxScheme | None:
        try:
            response = await self._transport.request("GET", "/v1/health", timeout=SCHEME_HTTP_TIMEOUT)
            sandbox_url = json_object(response.content).get("sandbox_url")
        except AtollError:
            return None
        if not isinstance(sandbox_url, dict):
            return None
        await self._trust_announced_ca(sandbox_url.get("ca"))
        scheme = sandbox_url.get("scheme")
        return cast(SandboxScheme, scheme) if scheme in SANDBOX_SCHEMES else None

    async def _trust_announced_ca(self, path: object) -> None:
        """A server with its own local CA (``atoll serve`` makes one) serves it; trusting it is
        what lets this client reach sandbox URLs over https with no setup. It comes from the
        same server, over the same connection as the API key, so it is trusted as much as that."""
        if not isinstance(path, str) or not path.startswith("/v1/"):
            return
        try:
            response = await self._transport.request("GET", path, timeout=SCHEME_HTTP_TIMEOUT)
            self._transport.trust_ca(response.text)
        except (AtollError, ValueError, ssl.SSLError):
            return  # sandbox URLs then need the CA in the system store or SSL_CERT_FILE

    async def create(
        self,
        *,
        template_name: str = DEFAULT_TEMPLATE_NAME,
        vcpu: int = DEFAULT_VCPU,
        memory_mib: int = DEFAULT_MEMORY_MIB,
        timeout_min: int = DEFAULT_TIMEOUT_MIN,
        auto_pause: bool = False,
        otel_export: bool | None = None,
        telemetry: bool | None = None,
        env_vars: dict[str, str] | None = None,
        network_policy: NetworkPolicyDict | None = None,
        http_timeout: float | None = None,
    ) -> SandboxT:
        """Create a sandbox from a template; arguments are checked before anything is sent.

        ``otel_export`` copies the local ``OTEL_EXPORTER_OTLP_ENDPOINT`` (required) and
        ``OTEL_EXPORTER_OTLP_HEADERS`` into the sandbox's environment; keys in ``env_vars`` win.
        ``telemetry`` is its deprecated alias.
        """
        if telemetry is not None:
            warnings.warn(
                "telemetry= is deprecated; use otel_export= instead", DeprecationWarning, stacklevel=2
            )
        export = otel_export if otel_export is not None else bool(telemetry)
        if export:
            caller_env = check_env_vars("env_vars", env_vars) if env_vars is not None else {}
            env_vars = {**otel_env_vars(os.environ), **caller_env}
        body = create_body(
            template_name=template_name,
            vcpu=vcpu,
            memory_mib=memory_mib,
            timeout_min=timeout_min,
            auto_pause=auto_pause,
            env_vars=env_vars,
            network_policy=network_policy,
        )
        await self._learn_scheme(http_timeout)  # the sandbox handed out gets its URLs built
        response = await self._transport.request(
            "POST", "/v1/sandbox", json=body, expected_status=201, timeout=http_timeout
        )
        return self._wrap(SandboxData.from_dict(json_object(response.content)))

    async def get(self, sandbox: SandboxRef, http_timeout: float | None = None) -> SandboxT:
        """The latest metadata (``SandboxStatus``, which carries no ``network_policy``)."""
        path = sandbox_path(sandbox, "/")
        await self._learn_scheme(http_timeout)
        response = await self._transport.request("GET", path, timeout=http_timeout)
        return self._wrap(SandboxStatus.from_dict(json_object(response.content)))

    async def list(
        self,
        *,
        state: SandboxState | str | None = None,
        sort: str = "created_at",
        order_by: str = "desc",
        page: int = 1,
        page_size: int = 20,
        http_timeout: float | None = None,
    ) -> SandboxList:
        """One page of the organisation's sandboxes, optionally only those in ``state``."""
        params = list_params(state=state, sort=sort, order_by=order_by, page=page, page_size=page_size)
        response = await self._transport.request("GET", "/v1/sandboxes", params=params, timeout=http_timeout)
        return SandboxList.from_dict(json_object(response.content))

    async def pause(self, sandbox: SandboxRef, http_timeout: float | None = None) -> SandboxT:
        """Save memory and disk and stop compute; any later request to the sandbox resumes it."""
        path = sandbox_path(sandbox, "/pause")
        await self._learn_scheme(http_timeout)
        response = await self._transport.request("POST", path, expected_status=201, timeout=http_timeout)
        return self._wrap(SandboxData.from_dict(json_object(response.content)))

    async def stop(self, sandbox: SandboxRef, http_timeout: float | None = None) -> SandboxT:
        """Stop a running sandbox: its disk changes are kept, its memory is not."""
        path = sandbox_path(sandbox, "/stop")
        await self._learn_scheme(http_timeout)
        response = await self._transport.request("POST", path, timeout=http_timeout)
        return self._wrap(SandboxData.from_dict(json_object(response.content)))

    async def start(self, sandbox: SandboxRef, http_timeout: float | None = None) -> SandboxT:
        """Boot a stopped sandbox again over its kept disk changes."""
        path = sandbox_path(sandbox, "/start")
        await self._learn_scheme(http_timeout)
        response = await self._transport.request("POST", path, timeout=http_timeout)
        return self._wrap(SandboxData.from_dict(json_object(response.content)))

    async def delete(self, sandbox: SandboxRef, http_timeout: float | None = None) -> None:
        """Terminate the sandbox and delete everything it holds."""
        await self._transport.request(
            "DELETE", sandbox_path(sandbox, "/"), expected_status=204, timeout=http_timeout
        )

    def invoke_url(self, sandbox: SandboxRef, path: str = "/", *, port: int | None = None) -> str:
        """A URL routed straight to the sandbox, built locally: ``{scheme}://{id}[-{port}].{domain}{path}``.

        Without a port, traffic goes to the port named by the template's ``PORT`` variable.
        """
        if not self._sandbox_domain:
            raise InvalidArgument("sandbox_domain", "is empty: set it on the client or ATOLL_SANDBOX_DOMAIN")
        host = sandbox_id(sandbox) if port is None else f"{sandbox_id(sandbox)}-{check_port(port)}"
        path = path if path.startswith("/") else f"/{path}"
        return f"{self._sandbox_scheme}://{host}.{self._sandbox_domain}{path}"

    def websocket_url(self, sandbox: SandboxRef, path: str = "/", *, port: int | None = None) -> str:
        """The same URL with ``wss`` (or ``ws`` when sandbox hosts are plain HTTP)."""
        url = self.invoke_url(sandbox, path, port=port)
        return "ws" + url.removeprefix("http")  # https -> wss, http -> ws
