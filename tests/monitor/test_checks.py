"""Each check against the real stack: a verdict, an observed value with unit, evidence."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.monitor.checks import CHECKS, Check, CheckContext, Outcome
from services.monitor.checks.delivery import PROBE_HEADER
from shared.imap import check, imap_session
from shared.settings import Settings

pytestmark = pytest.mark.usefixtures("mail_stack")


async def run(name: str, settings: Settings) -> Outcome:
    return (await CHECKS[name].run(CheckContext(settings))).outcome


async def test_imap_check_logs_in_to_the_probe_mailbox_and_measures_latency(
    settings: Settings,
) -> None:
    outcome = await run("imap", settings)
    assert outcome.status == "pass", outcome.message
    assert outcome.unit == "s" and outcome.value is not None and outcome.value > 0
    assert outcome.details["address"] == settings.monitor_probe_address


async def test_delivery_round_trip_is_measured_under_a_second_and_the_probe_is_deleted(
    settings: Settings,
) -> None:
    outcome = await run("delivery", settings)
    assert outcome.status == "pass", outcome.message
    assert outcome.unit == "s"
    assert outcome.value is not None and 0 < outcome.value < 1.0
    assert outcome.gauges[0].name == "mailops_delivery_roundtrip_seconds"
    async with imap_session(settings.monitor_probe_address, settings=settings) as client:
        check(await client.select("INBOX"), "SELECT")
        left = check(await client.uid_search(f'HEADER {PROBE_HEADER} ""'), "SEARCH")
    assert not left.lines[0].strip(), "probe messages were left in the mailbox"


async def test_lmtp_and_managesieve_answer(settings: Settings) -> None:
    for name in ("lmtp", "sieve"):
        outcome = await run(name, settings)
        assert outcome.status == "pass", (name, outcome.message)
        assert outcome.unit == "s"


async def test_lmtp_on_a_closed_port_fails_with_the_reason(settings: Settings) -> None:
    from tests.conftest import free_port

    outcome = await run("lmtp", settings.model_copy(update={"lmtp_port": free_port()}))
    assert outcome.status == "fail"
    assert "unreachable" in outcome.message


async def test_queue_check_reports_depth_by_queue_and_oldest_age(settings: Settings) -> None:
    outcome = await run("queue", settings)
    assert outcome.status == "pass", outcome.message
    assert set(outcome.details["depth"]) >= {"active", "deferred", "hold"}
    names = {(g.name, g.labels.get("queue")) for g in outcome.gauges}
    assert ("mailops_queue_messages", "deferred") in names
    assert ("mailops_queue_oldest_message_age_seconds", None) in names


async def test_dns_check_with_no_reachable_resolver_is_unknown_not_fail(
    settings: Settings,
) -> None:
    outcome = await run("dns", settings)
    assert outcome.status == "unknown"
    assert settings.monitor_dns_resolver in outcome.message


async def test_platform_check_sees_postgresql_redis_and_the_job_queues(
    settings: Settings,
) -> None:
    outcome = await run("platform", settings)
    assert outcome.details["postgresql"] == "pass"
    assert outcome.details["redis"] == "pass"
    assert set(outcome.details["queues"]) == {"provisioning", "backup", "monitor"}
    assert outcome.status in ("pass", "warn"), outcome.message  # no workers run in tests


def _tls_server_files(days_left: float) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    folder = Path(tempfile.mkdtemp(prefix="monitor-tls-"))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(folder / "cert.pem"), str(folder / "key.pem")


@pytest.mark.parametrize(("days_left", "expected"), [(90, "pass"), (14, "warn"), (3, "fail")])
async def test_tls_check_grades_days_to_certificate_expiry(
    settings: Settings, days_left: float, expected: str
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_tls_server_files(days_left))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        outcome = await run(
            "tls", settings.model_copy(update={"monitor_tls_endpoints": [f"127.0.0.1:{port}"]})
        )
    finally:
        server.close()
    assert outcome.status == expected, outcome.message
    (endpoint,) = outcome.details["endpoints"]
    assert abs(endpoint["days_left"] - days_left) < 0.1
    assert outcome.gauges[0].name == "mailops_tls_cert_expiry_timestamp_seconds"


async def _starttls_server(context: ssl.SSLContext) -> asyncio.Server:
    """Speaks the SMTP or IMAP (by the client's first command) greeting, then STARTTLS."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready for SMTP or * OK ready for IMAP\r\n")
        command = await reader.readline()
        if command.startswith(b"EHLO"):
            writer.write(b"250-test\r\n250 STARTTLS\r\n")
            assert await reader.readline() == b"STARTTLS\r\n"
            writer.write(b"220 go ahead\r\n")
        else:
            assert command == b"a STARTTLS\r\n"
            writer.write(b"a OK begin TLS now\r\n")
        await writer.drain()
        await writer.start_tls(context)
        await reader.read(1)
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_tls_check_reads_certificates_behind_smtp_and_imap_starttls(
    settings: Settings,
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_tls_server_files(30))
    server = await _starttls_server(context)
    port = server.sockets[0].getsockname()[1]
    endpoints = [f"smtp://127.0.0.1:{port}", f"imap://127.0.0.1:{port}"]
    try:
        outcome = await run("tls", settings.model_copy(update={"monitor_tls_endpoints": endpoints}))
    finally:
        server.close()
    assert outcome.status == "pass", outcome.message
    assert [e["endpoint"] for e in outcome.details["endpoints"]] == endpoints
    assert all(abs(e["days_left"] - 30) < 0.1 for e in outcome.details["endpoints"])


async def test_a_check_that_raises_is_recorded_as_a_failure_not_an_error(
    settings: Settings,
) -> None:
    class Broken(Check):
        name = "broken"
        description = "raises"

        async def probe(self, ctx: CheckContext) -> Outcome:
            raise RuntimeError("disk on fire")

    measurement = await Broken().run(CheckContext(settings))
    assert measurement.outcome.status == "fail"
    assert measurement.outcome.message == "RuntimeError: disk on fire"
    assert measurement.duration_seconds >= 0
