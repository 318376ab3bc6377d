"""Client configuration: one immutable value object, resolved once at construction.

Every setting resolves in the same order: the argument (stripped; an empty string counts as not
given), then the environment, then the module default. Nothing reads the environment later, so
two clients built under different environments never share hidden state.
"""

from __future__ import annotations

import math
import os
from typing import Final, Literal, cast

from atoll._exceptions import InvalidArgument

SDK_VERSION: Final = "0.1.0"

ENV_API_KEY: Final = "ATOLL_API_KEY"
ENV_BASE_URL: Final = "ATOLL_BASE_URL"
ENV_SANDBOX_DOMAIN: Final = "ATOLL_SANDBOX_DOMAIN"
ENV_SANDBOX_SCHEME: Final = "ATOLL_SANDBOX_SCHEME"

# A local `atoll serve`: control plane on 7700, sandbox router on 7701.
DEFAULT_BASE_URL: Final = "http://127.0.0.1:7700"
DEFAULT_SANDBOX_DOMAIN: Final = "sbx.localhost:7701"
DEFAULT_SANDBOX_SCHEME: Final = "https"
DEFAULT_HTTP_TIMEOUT: Final = 300.0

SandboxScheme = Literal["https", "http"]
SANDBOX_SCHEMES: Final = ("https", "http")


def _from_env(value: str | None, env_var: str) -> str | None:
    if value is not None and value.strip():
        return value.strip()
    env_value = os.environ.get(env_var, "").strip()
    return env_value or None


def check_timeout(field: str, value: float) -> float:
    """A positive, finite number of seconds (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(field, f"must be a positive number of seconds, got {value!r}")
    seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise InvalidArgument(field, f"must be a positive, finite number of seconds, got {value!r}")
    return seconds


def resolve_sandbox_domain(value: str | None) -> str:
    domain = _from_env(value, ENV_SANDBOX_DOMAIN) or DEFAULT_SANDBOX_DOMAIN
    return domain.strip("/")


def resolve_sandbox_scheme(value: str | None) -> SandboxScheme:
    return given_sandbox_scheme(value) or DEFAULT_SANDBOX_SCHEME


def given_sandbox_scheme(value: str | None) -> SandboxScheme | None:
    """The scheme from the argument or the environment; None when neither gives one."""
    scheme = _from_env(value, ENV_SANDBOX_SCHEME)
    if scheme is None:
        return None
    scheme = scheme.lower()
    if scheme not in SANDBOX_SCHEMES:
        raise InvalidArgument("sandbox_scheme", f"must be 'https' or 'http', got {scheme!r}")
    return cast(SandboxScheme, scheme)


class ClientConfig:
    """Where the control plane lives, how to authenticate, and how sandbox URLs are built.

    ``sandbox_scheme="http"`` is for a deployment without TLS: sandbox URLs then use
    ``http``/``ws`` instead of ``https``/``wss``. When neither the argument nor
    ``ATOLL_SANDBOX_SCHEME`` gives a scheme (``sandbox_scheme_given`` is False), ``sandbox_scheme``
    is the default and the client uses the scheme the server announces instead (``GET
    /v1/health``, asked once). A local ``atoll serve`` speaks both on its router port, with a
    certificate from its own CA (``GET /v1/ca.pem``; trust it, e.g. with ``SSL_CERT_FILE``).
    """

    __slots__ = (
        "_api_key",
        "_base_url",
        "_sandbox_domain",
        "_sandbox_scheme",
        "_sandbox_scheme_given",
        "_timeout",
    )

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        sandbox_domain: str | None = None,
        sandbox_scheme: str | None = None,
        timeout: float | None = None,
    ) -> None:
        resolved_key = _from_env(api_key, ENV_API_KEY)
        if resolved_key is None:
            raise InvalidArgument("api_key", f"is required: pass api_key= or set {ENV_API_KEY}")
        resolved_url = (_from_env(base_url, ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
        if not resolved_url.startswith(("http://", "https://")):
            raise InvalidArgument("base_url", f"must be an http:// or https:// URL, got {resolved_url!r}")
        self._api_key = resolved_key
        self._base_url = resolved_url
        self._sandbox_domain = resolve_sandbox_domain(sandbox_domain)
        given = given_sandbox_scheme(sandbox_scheme)
        self._sandbox_scheme: SandboxScheme = given or DEFAULT_SANDBOX_SCHEME
        self._sandbox_scheme_given = given is not None
        self._timeout = DEFAULT_HTTP_TIMEOUT if timeout is None else check_timeout("timeout", timeout)

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def sandbox_domain(self) -> str:
        return self._sandbox_domain

    @property
    def sandbox_scheme(self) -> SandboxScheme:
        return self._sandbox_scheme

    @property
    def sandbox_scheme_given(self) -> bool:
        """Whether the scheme was set (argument or environment) rather than left to the server."""
        return self._sandbox_scheme_given

    @property
    def timeout(self) -> float:
        return self._timeout

    def _key(self) -> tuple[str, str, str, str, bool, float]:
        return (
            self._api_key,
            self._base_url,
            self._sandbox_domain,
            self._sandbox_scheme,
            self._sandbox_scheme_given,
            self._timeout,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientConfig):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        # The key never appears in logs or tracebacks, not even in part.
        return (
            f"ClientConfig(api_key='***', base_url={self._base_url!r}, "
            f"sandbox_domain={self._sandbox_domain!r}, sandbox_scheme={self._sandbox_scheme!r}, "
            f"timeout={self._timeout!r})"
        )
