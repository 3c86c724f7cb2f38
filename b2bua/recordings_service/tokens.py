"""Bearer tokens for the REST API (`[[api_tokens]]`): only their SHA-256 is stored.

The presented token is hashed and compared with every stored hash using
`hmac.compare_digest`, all of them every time, so neither the comparison nor the number
of tokens tried tells an attacker how close a guess came.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from b2bua.config import ApiToken

SCOPES = ("read", "admin")


class TokenBook:
    def __init__(self, tokens: Iterable[ApiToken]) -> None:
        self.tokens = tuple(tokens)

    def check(self, authorization: str | None) -> ApiToken | None:
        """The token an `Authorization: Bearer <token>` header presents, or None."""
        if not authorization:
            return None
        scheme, _, presented = authorization.strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for token in self.tokens:  # no early exit: every stored hash is compared
            if hmac.compare_digest(digest, token.token_sha256) and found is None:
                found = token
        return found

    @staticmethod
    def allows(token: ApiToken, scope: str) -> bool:
        """`admin` may do what `read` may, and delete."""
        return token.scope == "admin" or token.scope == scope
