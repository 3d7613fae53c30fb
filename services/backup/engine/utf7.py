"""IMAP's modified UTF-7 for folder names (RFC 3501 section 5.1.3)."""

from __future__ import annotations

import base64


def _b64encode(chunk: str) -> str:
    raw = chunk.encode("utf-16-be")
    return base64.b64encode(raw).decode().rstrip("=").replace("/", ",")


def encode(name: str) -> str:
    """`Entwürfe` -> `Entw&APw-rfe`; printable ASCII passes through, `&` becomes `&-`."""
    out: list[str] = []
    pending: list[str] = []
    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            if pending:
                out.append("&" + _b64encode("".join(pending)) + "-")
                pending = []
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    if pending:
        out.append("&" + _b64encode("".join(pending)) + "-")
    return "".join(out)


def decode(name: str) -> str:
    """The inverse of `encode`; a malformed sequence is kept as it is."""
    out: list[str] = []
    i = 0
    while i < len(name):
        char = name[i]
        if char != "&":
            out.append(char)
            i += 1
            continue
        end = name.find("-", i)
        if end == -1:
            out.append(name[i:])
            break
        if end == i + 1:
            out.append("&")
        else:
            chunk = name[i + 1 : end].replace(",", "/")
            try:
                raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4))
                out.append(raw.decode("utf-16-be"))
            except ValueError:
                out.append(name[i : end + 1])
        i = end + 1
    return "".join(out)
