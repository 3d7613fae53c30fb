"""Generated passwords handed out once, through a pickup token; neither is ever stored.

token    = HMAC(secret, "pickup:" + mailbox id + ":" + generation)
password = HMAC(secret, "password:" + token)

Only the token's SHA-256 and the password's Dovecot hash are kept. A password reset bumps
the mailbox's generation, so the old token and password stop working together.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

from shared.settings import get_settings


def _mac(message: str) -> bytes:
    secret = get_settings().credential_secret.get_secret_value().encode()
    return hmac.new(secret, message.encode(), hashlib.sha256).digest()


def pickup_token(mailbox_id: uuid.UUID, generation: int) -> str:
    return base64.urlsafe_b64encode(_mac(f"pickup:{mailbox_id}:{generation}")).decode().rstrip("=")


def password_for(token: str) -> str:
    """The password a token hands out: 32 URL-safe characters (192 bits)."""
    return base64.urlsafe_b64encode(_mac(f"password:{token}")[:24]).decode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
