"""Which backend the session server runs, for tests that assert how an attempt is blocked: a
gVisor sandbox meets the sentry (a user-space kernel) where an OCI one meets the host's kernel,
so the same attempt can be refused in another way (another errno, or the sentry's own copy of
what the host would have)."""

from __future__ import annotations

from tests._support.server import RUNTIME

GVISOR = RUNTIME == "runsc"
