"""`tls`: days until the certificate of each configured endpoint expires.

An endpoint is `host:port` (TLS from the first byte) or `smtp://host:port` /
`imap://host:port` (STARTTLS). The certificate is read without verifying it, so an
expired or self-signed one still reports its dates instead of only a handshake error.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from services.monitor.checks.base import (
    Check,
    CheckContext,
    Gauge,
    Outcome,
    Status,
    describe,
    read_reply,
    worst,
)

DAY = 86400.0


@dataclass(frozen=True)
class Endpoint:
    text: str
    host: str
    port: int
    starttls: str | None


def parse_endpoint(text: str) -> Endpoint:
    """`host:port`, `smtp://host:port` or `imap://host:port`; ValueError if it is neither."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    if scheme not in ("", "smtp", "imap"):
        raise ValueError(f"unknown scheme {scheme!r} in TLS endpoint {text!r}")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"TLS endpoint {text!r} is not host:port")
    return Endpoint(text, host.strip("[]"), int(port), scheme or None)


async def _starttls_preamble(
    endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    if endpoint.starttls == "smtp":
        await read_reply(reader)
        writer.write(b"EHLO mailops-monitor\r\n")
        await read_reply(reader)
        writer.write(b"STARTTLS\r\n")
        if not (await read_reply(reader))[-1].startswith(b"220"):
            raise ConnectionError("server refused STARTTLS")
    elif endpoint.starttls == "imap":
        await reader.readline()
        writer.write(b"a STARTTLS\r\n")
        while not (line := await reader.readline()).startswith(b"a "):
            if not line:
                raise ConnectionError("connection closed")
        if not line.startswith(b"a OK"):
            raise ConnectionError("server refused STARTTLS")


async def certificate_expiry(endpoint: Endpoint, time_limit: float) -> float:
    """The endpoint certificate's notAfter as a Unix timestamp."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if endpoint.starttls:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(endpoint.host, endpoint.port), time_limit
        )
        try:
            await asyncio.wait_for(_starttls_preamble(endpoint, reader, writer), time_limit)
            await asyncio.wait_for(
                writer.start_tls(context, server_hostname=endpoint.host), time_limit
            )
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
    else:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=context, server_hostname=endpoint.host
            ),
            time_limit,
        )
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
    if not der:
        raise ConnectionError("the server sent no certificate")
    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()


class TlsCheck(Check):
    name = "tls"
    description = "Days until each configured TLS endpoint's certificate expires"
    interval_seconds = 3600

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        if not settings.monitor_tls_endpoints:
            return Outcome(Status.PASS, "no TLS endpoints configured", details={"endpoints": []})
        endpoints: list[dict[str, Any]] = []
        gauges: list[Gauge] = []
        statuses: list[Status] = []
        now = time.time()
        for text in settings.monitor_tls_endpoints:
            try:
                endpoint = parse_endpoint(text)
                expires = await certificate_expiry(endpoint, settings.monitor_check_timeout_seconds)
            except (OSError, ValueError, TimeoutError, ssl.SSLError, ConnectionError) as exc:
                statuses.append(Status.FAIL)
                endpoints.append({"endpoint": text, "status": "fail", "error": describe(exc)})
                continue
            days = (expires - now) / DAY
            status = (
                Status.FAIL
                if days <= settings.monitor_tls_crit_days
                else Status.WARN
                if days <= settings.monitor_tls_warn_days
                else Status.PASS
            )
            statuses.append(status)
            endpoints.append(
                {
                    "endpoint": text,
                    "status": status.value,
                    "expires_at": expires,
                    "days_left": round(days, 2),
                }
            )
            gauges.append(
                Gauge("mailops_tls_cert_expiry_timestamp_seconds", expires, {"endpoint": text})
            )
        soonest = min((e["days_left"] for e in endpoints if "days_left" in e), default=None)
        failed = [e["endpoint"] for e in endpoints if "error" in e]
        message = (
            f"{len(endpoints)} endpoint(s); soonest expiry in {soonest:.1f} days"
            if soonest is not None
            else f"{len(endpoints)} endpoint(s)"
        )
        if failed:
            message += f"; unreachable: {', '.join(failed)}"
        return Outcome(
            worst(statuses),
            message,
            value=soonest * DAY if soonest is not None else None,
            unit="s",
            details={"endpoints": endpoints},
            gauges=gauges,
        )
