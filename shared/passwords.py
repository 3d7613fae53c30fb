"""Dovecot-ready password hashes and strong generated passwords.

Hashes are argon2id at OWASP's minimum cost (19 MiB, 2 passes, 1 lane): Dovecot verifies
the same string at every login, so the cost is paid twice per new account; generated
passwords carry 128+ bits of entropy, which no hash cost needs to make up for.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

DOVECOT_SCHEME = "{ARGON2ID}"
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def generate_password() -> str:
    """A 22-character URL-safe password (132 bits of entropy)."""
    return secrets.token_urlsafe(16) + secrets.choice("23456789") + secrets.choice("!#%+=")


def hash_password(password: str) -> str:
    """The Dovecot-ready hash, e.g. `{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$...`."""
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
