"""`dns`: each domain's MX, SPF, DMARC and DKIM (configured selector) through dnspython.

When no query gets an answer from any resolver (none reachable, e.g. no network), the
check reports `unknown` with the reason: it cannot tell whether the records are right.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from services.monitor import repository
from services.monitor.checks.base import Check, CheckContext, Gauge, Outcome, Status, describe
from shared.settings import Settings


class ResolverUnreachable(Exception):
    """No resolver answered the query at all."""


def make_resolver(settings: Settings) -> dns.asyncresolver.Resolver:
    if not settings.monitor_dns_resolver:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, _, port = settings.monitor_dns_resolver.rpartition(":")
        if not host or not port.isdigit():
            host, port = settings.monitor_dns_resolver, "53"
        resolver.nameservers = [host]
        resolver.port = int(port)
    resolver.lifetime = settings.monitor_dns_timeout_seconds
    resolver.timeout = settings.monitor_dns_timeout_seconds
    return resolver


async def _lookup(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[str]:
    """The records' texts; empty if the name or type does not exist."""
    try:
        answer = await resolver.resolve(name, rdtype)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
        raise ResolverUnreachable(describe(exc)) from exc
    if rdtype == "TXT":
        return [b"".join(r.strings).decode(errors="replace") for r in answer]
    return [r.to_text() for r in answer]


async def domain_posture(
    resolver: dns.asyncresolver.Resolver, domain: str, selector: str
) -> dict[str, Any]:
    mx, txt, dmarc, dkim = await asyncio.gather(
        _lookup(resolver, domain, "MX"),
        _lookup(resolver, domain, "TXT"),
        _lookup(resolver, f"_dmarc.{domain}", "TXT"),
        _lookup(resolver, f"{selector}._domainkey.{domain}", "TXT"),
    )
    spf = [t for t in txt if t.lower().startswith("v=spf1")]
    dmarc = [t for t in dmarc if t.lower().startswith("v=dmarc1")]
    dkim = [t for t in dkim if "p=" in t]
    problems = []
    if not mx:
        problems.append("no MX")
    if len(spf) != 1:
        problems.append("no SPF record" if not spf else "more than one SPF record")
    if not dmarc:
        problems.append("no DMARC record")
    if not dkim:
        problems.append(f"no DKIM key at selector {selector!r}")
    status = Status.FAIL if not mx else Status.WARN if problems else Status.PASS
    return {
        "domain": domain,
        "status": status.value,
        "mx": mx,
        "spf": spf,
        "dmarc": dmarc,
        "dkim": bool(dkim),
        "problems": problems,
    }


class DnsCheck(Check):
    name = "dns"
    description = "Each domain's MX, SPF, DMARC and DKIM records"
    interval_seconds = 3600

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        domains = settings.monitor_dns_domains
        if not domains:
            async with ctx.sessions() as session:
                domains = await repository.domain_names(session)
        if not domains:
            return Outcome(Status.PASS, "no domains to check", details={"domains": []})
        resolver = make_resolver(settings)
        where = settings.monitor_dns_resolver or "the system resolver"
        results: list[dict[str, Any]] = []
        unreachable: list[str] = []
        for domain in domains:
            try:
                results.append(
                    await domain_posture(resolver, domain, settings.monitor_dkim_selector)
                )
            except ResolverUnreachable as exc:
                unreachable.append(domain)
                results.append({"domain": domain, "status": "unknown", "error": str(exc)})
                if len(unreachable) == len(results):
                    # Nothing has answered yet: the resolver is down, not this domain;
                    # waiting out a timeout per domain would only delay saying so.
                    break
        if len(unreachable) == len(results):
            return Outcome(
                Status.UNKNOWN,
                f"no answer from {where}: {results[0]['error']}",
                details={"resolver": where, "domains": results},
            )
        statuses = [r["status"] for r in results]
        failing = [r["domain"] for r in results if r["status"] in ("fail", "warn")]
        status = (
            Status.FAIL
            if "fail" in statuses
            else Status.WARN
            if failing or unreachable
            else Status.PASS
        )
        message = (
            f"{len(domains) - len(failing) - len(unreachable)} of {len(domains)} domains in order"
        )
        if failing:
            message += f"; problems: {', '.join(failing[:10])}"
        return Outcome(
            status,
            message,
            value=float(len(failing)),
            unit="domains",
            details={"resolver": where, "domains": results},
            gauges=[Gauge("mailops_dns_domains_with_problems", len(failing))],
        )
