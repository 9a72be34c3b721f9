"""Dashboard sessions: an operator signs in with their token once; the browser then holds
only a random session id in an HttpOnly, SameSite=Strict cookie. The token never leaves the
sign-in POST: not in a URL, a cookie, a page or a log.

Sessions live in the gateway's memory (a restart signs everyone out), each with an idle
timeout and an absolute lifetime, at most `max_sessions` of them (the least recently used
is dropped first). Each carries its own CSRF token, which every POST must echo.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

SESSION_COOKIE = "lendcore_dashboard"
IDLE_TIMEOUT_S = 30 * 60
MAX_AGE_S = 12 * 3600
MAX_SESSIONS = 1000
TOKEN_BYTES = 32  # 256 bits, URL-safe base64: unguessable


@dataclass
class Session:
    session_id: str
    operator: str  # the operator's name: its roles are looked up on every request
    csrf_token: str
    created_at: float
    last_seen: float


class SessionStore:
    def __init__(
        self, *, idle_timeout_s: float = IDLE_TIMEOUT_S, max_age_s: float = MAX_AGE_S,
        max_sessions: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_age_s = max_age_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, operator: str) -> Session:
        """A new session for `operator`; the least recently used one goes when full."""
        self._drop_expired()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        now = self.clock()
        session = Session(secrets.token_urlsafe(TOKEN_BYTES), operator,
                          secrets.token_urlsafe(TOKEN_BYTES), now, now)
        self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """The live session of that id (its idle timer restarts), or None."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if self._expired(session, now):
            del self._sessions[session_id]
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def end_all_of(self, operator: str) -> None:
        """Sign an operator out everywhere (it is no longer configured)."""
        for session_id in [s.session_id for s in self._sessions.values()
                           if s.operator == operator]:
            del self._sessions[session_id]

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            session.csrf_token.encode(), presented.encode())

    def _expired(self, session: Session, now: float) -> bool:
        return (now - session.last_seen > self.idle_timeout_s
                or now - session.created_at > self.max_age_s)

    def _drop_expired(self) -> None:
        now = self.clock()
        for session_id in [s.session_id for s in self._sessions.values()
                           if self._expired(s, now)]:
            del self._sessions[session_id]
