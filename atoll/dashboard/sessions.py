"""Dashboard sign-in: server-side sessions behind an opaque cookie, and CSRF tokens.

The API key is checked once, at sign-in, with the API's own lookup; the cookie then holds only
a random session id (HttpOnly, SameSite=Strict), never the key. Sessions live in this process's
memory: a restart signs everyone out, which is the safe direction. Their number is bounded (the
oldest goes first), and each one expires after ``SESSION_TTL_S`` of inactivity.

Every state-changing request carries the session's CSRF token (form field ``csrf`` or header
``X-CSRF-Token``); the sign-in form, which has no session yet, uses a double-submit cookie.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from fastapi import Request

SESSION_COOKIE = "atoll_session"
LOGIN_CSRF_COOKIE = "atoll_login_csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 10_000


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in form, fragments answer 401."""


class CsrfRefused(Exception):
    """A state-changing request without the session's CSRF token (403)."""


@dataclass
class Session:
    id: str
    org_id: str
    key_hash: str  # of the key it signed in with: revoking that key ends the session
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    seen: float = field(default_factory=time.monotonic)


class SessionStore:
    def __init__(self, *, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, org_id: str, key_hash: str) -> Session:
        session = Session(id=secrets.token_urlsafe(32), org_id=org_id, key_hash=key_hash)
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > self.ttl_s:
            del self._sessions[session_id]
            return None
        session.seen = now
        self._sessions.move_to_end(session_id)
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def drop_key(self, key_hash: str) -> int:
        """End every session signed in with this key (it was revoked); how many there were."""
        ended = [sid for sid, s in self._sessions.items() if s.key_hash == key_hash]
        for sid in ended:
            del self._sessions[sid]
        return len(ended)


def store(request: Request) -> SessionStore:
    app_state = request.app.state
    sessions: SessionStore | None = getattr(app_state, "dashboard_sessions", None)
    if sessions is None:
        sessions = app_state.dashboard_sessions = SessionStore()
    return sessions


def current(request: Request) -> Session:
    """The signed-in session, or ``SignInRequired``."""
    session = store(request).get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise SignInRequired
    return session


def same(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())


def check_csrf(session: Session, request: Request, form_token: str | None = None) -> None:
    if not (same(session.csrf, request.headers.get(CSRF_HEADER)) or same(session.csrf, form_token)):
        raise CsrfRefused
