"""Fixtures of the backup tests: a mailbox on the real Dovecot, the pack storage, corpora."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from services.backup.engine.storage import PackStorage, default_storage
from tests.conftest import service_client

ENMIME = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "enmime"


@pytest.fixture
def storage() -> PackStorage:
    return default_storage()


def generated_corpus(count: int, *, seed: int = 7) -> list[tuple[bytes, list[str], datetime]]:
    """Messages with attachments, non-ASCII headers and keywords; deterministic per seed."""
    rng = random.Random(seed)
    flag_sets = [[], ["\\Seen"], ["\\Seen", "\\Flagged"], ["\\Answered", "$Label1"], ["Urgent"]]
    start = datetime(2023, 3, 1, 9, 30, tzinfo=UTC)
    messages = []
    for i in range(count):
        msg = EmailMessage()
        msg["From"] = f"Jörg Müller <sender{i}@x.test>"
        msg["To"] = "empfänger@y.test"
        msg["Subject"] = f"Bericht {i} — Übersicht"
        msg["Message-ID"] = f"<gen-{seed}-{i}@x.test>"
        msg["Date"] = (start + timedelta(hours=i)).strftime("%a, %d %b %Y %H:%M:%S +0000")
        msg.set_content(f"Hallo {i}\n" + "Lorem ipsum dolor sit amet. " * rng.randint(1, 60))
        if i % 4 == 0:
            msg.add_attachment(
                rng.randbytes(rng.randint(2_000, 60_000)),
                maintype="application",
                subtype="octet-stream",
                filename=f"anhang-{i}.bin",
            )
        data = bytes(msg).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        messages.append((data, flag_sets[i % len(flag_sets)], start + timedelta(minutes=7 * i)))
    return messages


def enmime_corpus(*, seed: int = 3) -> list[tuple[bytes, list[str], datetime]]:
    """Every message of ../shared/corpus/enmime (half of them without a Message-ID), with
    flags and keywords, an INTERNALDATE each."""
    rng = random.Random(seed)
    files = sorted(p for p in ENMIME.iterdir() if p.suffix == ".raw")
    assert len(files) > 50
    start = datetime(2021, 6, 1, 8, 0, tzinfo=UTC)
    return [
        (
            p.read_bytes(),
            rng.choice([[], ["\\Seen"], ["\\Seen", "$Forwarded"], ["\\Flagged", "Review"]]),
            start + timedelta(hours=i, seconds=i),
        )
        for i, p in enumerate(files)
    ]


@pytest.fixture
def corpus() -> Callable[..., list[tuple[bytes, list[str], datetime]]]:
    return generated_corpus


@pytest.fixture
async def api():
    """The backup service's API, in this process."""
    async with service_client("backup") as client:
        yield client
