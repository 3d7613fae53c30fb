"""Generated passwords handed out once, through a pickup token.

token    = HMAC(secret, "pickup:" + mailbox id + ":" + generation)
password = 192 random bits, kept until its pickup only sealed (AES-256-GCM) under a key
           derived from the token

The token is derived, not stored, so whoever may see it (the creator, a request's filer)
can be shown it again while it waits. Only the token's SHA-256, the sealed password and
the password's Dovecot hash are kept, and the pickup erases the sealed password: from then
on neither the database nor the secret, nor both, give the password back. A password reset
bumps the mailbox's generation, so the old token stops working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.settings import get_settings

_NONCE_BYTES = 12


def pickup_token(mailbox_id: uuid.UUID, generation: int) -> str:
    secret = get_settings().credential_secret.get_secret_value().encode()
    mac = hmac.new(secret, f"pickup:{mailbox_id}:{generation}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_password() -> str:
    """32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def _sealer(token: str) -> AESGCM:
    return AESGCM(hmac.new(token.encode(), b"mailops password seal", hashlib.sha256).digest())


def seal_password(token: str, password: str) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + _sealer(token).encrypt(nonce, password.encode(), None)


def open_password(token: str, sealed: bytes) -> str:
    return _sealer(token).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], None).decode()
