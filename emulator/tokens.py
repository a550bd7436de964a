"""Signed conversation tokens: what the emulator puts in ``conversation_signature``.

``<payload>.<mac>`` with payload = base64url("agent_id|nonce|expiry_ns") and mac = HMAC-SHA256 under a key
that lives only in this process. The real format is opaque and undocumented; only its behaviour matters:
bound to one agent, expires (15 min by default), and single-use here unless configured otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["TokenError", "TokenIssuer"]


class TokenError(Exception):
    """A token was refused; ``status`` is the HTTP status the upgrade is answered with."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    def __init__(self, *, ttl_ns: int, single_use: bool = True) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl_ns = ttl_ns
        self._single_use = single_use
        self._used: set[str] = set()
        self.issued = 0

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, agent_id: str, now_ns: int) -> str:
        self.issued += 1
        payload = _b64(f"{agent_id}|{secrets.token_hex(8)}|{now_ns + self._ttl_ns}".encode())
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str, agent_id: str, now_ns: int) -> None:
        payload, _, mac = token.partition(".")
        if not payload or not mac or not token.isascii():
            raise TokenError("malformed signature")
        if not hmac.compare_digest(self._mac(payload), mac):
            raise TokenError("bad signature")
        try:
            signed_agent, nonce, expiry = _unb64(payload).decode().split("|")
            expiry_ns = int(expiry)
        except ValueError:
            raise TokenError("malformed signature") from None
        if signed_agent != agent_id:
            raise TokenError("signature is for another agent")
        if now_ns > expiry_ns:
            raise TokenError("signature expired")
        if self._single_use:
            if nonce in self._used:
                raise TokenError("signature already used")
            self._used.add(nonce)
