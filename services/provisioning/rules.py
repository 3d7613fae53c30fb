"""Mail rules: the small JSON rule form compiled to Sieve, and what a script redirects to."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from shared.imap import quoted

SCRIPT_NAME = "mailops"


class Condition(BaseModel):
    """Match a header (`subject`, `from`, `to`, ...) against a value."""

    header: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    match: Literal["contains", "is", "matches"] = "contains"
    value: str = Field(max_length=500)


class FileInto(BaseModel):
    action: Literal["fileinto"]
    when: Condition
    folder: str = Field(min_length=1, max_length=200)


class Discard(BaseModel):
    action: Literal["discard"]
    when: Condition


class Vacation(BaseModel):
    action: Literal["vacation"]
    subject: str = Field(max_length=200)
    message: str = Field(min_length=1, max_length=10_000)
    days: int = Field(default=7, ge=1, le=30)


Rule = Annotated[FileInto | Discard | Vacation, Field(discriminator="action")]


def _test(condition: Condition) -> str:
    return f"header :{condition.match} {quoted(condition.header.lower())} {quoted(condition.value)}"


def compile_rules(rules: list[FileInto | Discard | Vacation]) -> str:
    """The Sieve script for a list of rules, in order; the first vacation rule wins."""
    extensions = sorted(
        {
            {"fileinto": "fileinto", "vacation": "vacation"}[r.action]
            for r in rules
            if r.action != "discard"
        }
    )
    lines = [f"require [{', '.join(quoted(e) for e in extensions)}];"] if extensions else []
    for rule in rules:
        if isinstance(rule, FileInto):
            lines.append(
                f"if {_test(rule.when)} {{\n  fileinto {quoted(rule.folder)};\n  stop;\n}}"
            )
        elif isinstance(rule, Discard):
            lines.append(f"if {_test(rule.when)} {{\n  discard;\n  stop;\n}}")
        else:
            lines.append(
                f"vacation :days {rule.days} :subject {quoted(rule.subject)} "
                f"{quoted(rule.message)};"
            )
    return "\n".join(lines) + "\n"


# `redirect [:copy] "address";` — also the multi-line text: form is not used for addresses.
_REDIRECT = re.compile(r'\bredirect\b(?:\s+:copy)?\s+"((?:[^"\\]|\\.)*)"', re.IGNORECASE)
_COMMENT = re.compile(r"#[^\n]*|/\*.*?\*/", re.DOTALL)


def redirect_targets(script: str) -> list[str]:
    """Addresses a Sieve script redirects mail to (comments ignored)."""
    code = _COMMENT.sub("", script)
    return [re.sub(r"\\(.)", r"\1", m.group(1)) for m in _REDIRECT.finditer(code)]


_ERROR_LINE = re.compile(r"line (\d+):\s*(?:error:\s*)?(.*)")


def first_error(message: str) -> tuple[int | None, str]:
    """The line number and text of the first error in a Sieve compiler message."""
    for line in message.splitlines():
        found = _ERROR_LINE.search(line)
        if found:
            return int(found.group(1)), found.group(2).strip()
    return None, message.strip()
