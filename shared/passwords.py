"""Dovecot-ready password hashes and strong generated passwords.

Hashes are argon2id at one of OWASP's recommended minimum costs (12 MiB, 3 passes, 1 lane;
~16 ms of CPU here). Dovecot verifies the same string at every login, so the cost is paid
twice per new account; generated passwords carry 128+ bits of entropy, which no hash cost
needs to make up for.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

DOVECOT_SCHEME = "{ARGON2ID}"
_hasher = PasswordHasher(time_cost=3, memory_cost=12288, parallelism=1)


def generate_password() -> str:
    """A 22-character URL-safe password (132 bits of entropy)."""
    return secrets.token_urlsafe(16) + secrets.choice("23456789") + secrets.choice("!#%+=")


def hash_password(password: str) -> str:
    """The Dovecot-ready hash, e.g. `{ARGON2ID}$argon2id$v=19$m=12288,t=3,p=1$...`."""
    return DOVECOT_SCHEME + _hasher.hash(password)


async def hash_password_async(password: str) -> str:
    """`hash_password` off the event loop: argon2 is CPU work."""
    return await asyncio.to_thread(hash_password, password)


def verify_password(password_hash: str, password: str) -> bool:
    if not password_hash.startswith(DOVECOT_SCHEME):
        return False
    try:
        return _hasher.verify(password_hash.removeprefix(DOVECOT_SCHEME), password)
    except VerificationError:
        return False
