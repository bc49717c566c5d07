"""The one bearer-token check shared by every protocol (HTTP middleware, TCP ``auth``)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from .errors import UnauthorizedError


class TokenAuth:
    """Accepts any of the configured tokens; with none configured, auth is off.

    Tokens are compared in constant time, each against every configured token, so response
    timing tells nothing about how much of a token was right or which token matched.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [token.encode() for token in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def accepts(self, token: str | None) -> bool:
        if not self._tokens:
            return True
        if not isinstance(token, str):
            return False
        given = token.encode("utf-8", "surrogatepass")  # a lone surrogate (JSON allows one) is just wrong
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(given, known)
        return matched

    def check(self, token: str | None) -> None:
        """Raise `UnauthorizedError` unless ``token`` is accepted."""
        if not self.accepts(token):
            raise UnauthorizedError("missing or invalid auth token" if token else "auth token required")

    def check_header(self, authorization: str | None) -> None:
        """Check an HTTP ``Authorization: Bearer <token>`` header value."""
        if not self._tokens:
            return
        if not authorization:
            raise UnauthorizedError("auth token required: send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("Authorization header must be 'Bearer <token>'")
        if not self.accepts(token.strip()):
            raise UnauthorizedError("invalid auth token")
