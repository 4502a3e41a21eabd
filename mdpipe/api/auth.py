"""Bearer tokens: `MDPIPE_API_TOKEN` (one token, or several separated by commas).

A presented token is compared with every configured one by `hmac.compare_digest` (constant
time, no early exit on the first match), so response timing says nothing about how much of a
token was right. Everywhere a token must be named (rate-limit buckets, idempotency keys, logs)
its fingerprint is used instead: the first 16 hex digits of its SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

TOKEN_ENV = "MDPIPE_API_TOKEN"


def tokens_from_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    raw = environ.get(TOKEN_ENV, "")
    return tuple(t.strip() for t in raw.split(",") if t.strip())


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class TokenCheck:
    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: str | None) -> tuple[str | None, str]:
        """(fingerprint of the matching token or None, the reason when None)."""
        if not self._tokens:
            return None, f"posting is disabled: the server has no {TOKEN_ENV}"
        if not authorization:
            return None, "missing Authorization header (expected 'Bearer <token>')"
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None, "Authorization must be 'Bearer <token>'"
        got = presented.strip().encode()
        match = None
        for t in self._tokens:
            if hmac.compare_digest(got, t) and match is None:
                match = t
        if match is None:
            return None, "invalid token"
        return fingerprint(match.decode()), ""


__all__ = ["TOKEN_ENV", "TokenCheck", "fingerprint", "tokens_from_env"]
