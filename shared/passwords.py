"""Dovecot-ready password hashes and strong generated passwords.

Every password mailops stores is a secret it generated itself (132+ bits of entropy for
mailboxes) or a machine secret from settings (the master user), never a human's choice.
A slow hash (argon2, bcrypt) exists to make guessing weak human passwords expensive; for
these it buys nothing and costs ~16 ms of CPU in the API and again in Dovecot at every
login (measured in docs/benchmarks.md). So hashes are salted SHA-512 in Dovecot's
`{SSHA512}` scheme: base64(SHA-512(password + salt) + salt).
"""

from __future__ import annotations

import base64
import hashlib
import secrets

DOVECOT_SCHEME = "{SSHA512}"
_SALT_BYTES = 16


def generate_password() -> str:
    """A 22-character URL-safe password (132 bits of entropy)."""
    return secrets.token_urlsafe(16) + secrets.choice("23456789") + secrets.choice("!#%+=")


def hash_password(password: str) -> str:
    """The Dovecot-ready hash, e.g. `{SSHA512}base64...`."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return DOVECOT_SCHEME + base64.b64encode(digest + salt).decode()
