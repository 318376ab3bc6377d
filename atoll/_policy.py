"""A sandbox's network policy as the API takes it (wire-protocol section 3): the one frozen type
that travels from the request through the create parameters and the store's rows (a JSON column
that reads back into it) to the egress layer, which compiles it once per use
(``atoll.network.policy.EgressPolicy.compile``) for the resolver, the proxy and nftables.

Here, below every layer, because the store's column type needs it as much as the network does.
``model_dump(exclude_unset=True)`` is its wire and stored form: what the request gave, nothing
more (a GET answers the policy as it was given)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Mode = Literal["allow-all", "deny-all", "custom"]
_DOMAIN = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.I
)


def check_domain(value: str) -> str:
    """A domain pattern as the wire protocol allows it (``api.example.com``, ``*.example.com``)."""
    if ":" in value or not _DOMAIN.match(value):
        raise ValueError("must be a domain name like 'api.example.com' or '*.example.com' (no port)")
    return value.lower()


class Transform(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    domain: str
    inject_headers: dict[str, str] | None = None
    strip_headers: tuple[str, ...] | None = None

    _check_domain = field_validator("domain")(classmethod(lambda cls, v: check_domain(v)))


class NetworkPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Mode
    allow_domains: Annotated[tuple[str, ...], Field(max_length=50)] | None = None
    allow_cidrs: Annotated[tuple[str, ...], Field(max_length=10)] | None = None
    transforms: Annotated[tuple[Transform, ...], Field(max_length=20)] | None = None

    @field_validator("allow_domains")
    @classmethod
    def _domains(cls, values: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return tuple(check_domain(v) for v in values) if values is not None else None

    @field_validator("allow_cidrs")
    @classmethod
    def _cidrs(cls, values: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for value in values or ():
            try:
                ipaddress.IPv4Network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IPv4 address or CIDR") from None
        return values

    def wire(self) -> dict[str, Any]:
        """The JSON form: what the request gave (unset fields stay out)."""
        return self.model_dump(mode="json", exclude_unset=True)
