"""`quota`: every mailbox's usage against its quota, from one `doveadm quota get -A` call.

One doveadm run reads every user's quota in a single process (about half a second per
thousand mailboxes here), where IMAP GETQUOTAROOT would need a master login per mailbox.
"""

from __future__ import annotations

from services.monitor import repository
from services.monitor.checks.base import Check, CheckContext, Gauge, Outcome, Status
from services.monitor.doveadm import DoveadmError, doveadm
from shared.settings import Settings

LISTED = 200


async def quota_usage(settings: Settings, time_limit: float) -> dict[str, int]:
    """address → bytes used (STORAGE), for every user Dovecot's userdb lists."""
    out = await doveadm(settings, "quota", "get", "-A", time_limit=time_limit)
    usage: dict[str, int] = {}
    for line in out.splitlines()[1:]:
        fields = line.split("\t")
        # Username, Quota name, Type, Value, Limit, %; STORAGE values are in KiB.
        if len(fields) >= 4 and fields[2] == "STORAGE" and fields[3].isdigit():
            usage[fields[0].lower()] = int(fields[3]) * 1024
    return usage


class QuotaCheck(Check):
    name = "quota"
    description = "Every mailbox's usage against its quota (warn 80%, crit 95% by default)"
    interval_seconds = 900

    def timeout_seconds(self, settings: Settings) -> float:
        return max(60.0, settings.monitor_check_timeout_seconds)

    async def probe(self, ctx: CheckContext) -> Outcome:
        settings = ctx.settings
        async with ctx.sessions() as session:
            mailboxes = await repository.watched_mailboxes(session)
        try:
            usage = await quota_usage(settings, self.timeout_seconds(settings))
        except DoveadmError as exc:
            return Outcome(Status.UNKNOWN, str(exc))
        warn, crit = settings.monitor_quota_warn_ratio, settings.monitor_quota_crit_ratio
        near: list[dict[str, object]] = []
        over_crit = 0
        used_total = 0
        highest = 0.0
        for mailbox in mailboxes:
            used = usage.get(mailbox.address.lower(), 0)
            used_total += used
            ratio = used / mailbox.quota_bytes
            highest = max(highest, ratio)
            if ratio >= warn:
                over_crit += ratio >= crit
                near.append(
                    {
                        "address": mailbox.address,
                        "department": mailbox.department,
                        "used_bytes": used,
                        "quota_bytes": mailbox.quota_bytes,
                        "ratio": round(ratio, 4),
                        "level": "crit" if ratio >= crit else "warn",
                    }
                )
        near.sort(key=lambda m: -float(str(m["ratio"])))
        total = len(mailboxes)
        status = Status.FAIL if over_crit else Status.WARN if near else Status.PASS
        return Outcome(
            status,
            f"{len(near)} of {total} mailboxes at or above {warn:.0%} of quota "
            f"({over_crit} at or above {crit:.0%})",
            value=highest,
            unit="ratio",
            details={
                "mailboxes": total,
                "near_quota_count": len(near),
                "over_crit_count": over_crit,
                "near_quota": near[:LISTED],
                "warn_ratio": warn,
                "crit_ratio": crit,
            },
            gauges=[
                Gauge("mailops_mailboxes", total),
                Gauge(
                    "mailops_mailboxes_over_quota_ratio",
                    len(near) / total if total else 0.0,
                    {"level": "warn"},
                ),
                Gauge(
                    "mailops_mailboxes_over_quota_ratio",
                    over_crit / total if total else 0.0,
                    {"level": "crit"},
                ),
                Gauge("mailops_mailbox_quota_usage_max_ratio", highest),
                Gauge("mailops_mail_storage_used_bytes", used_total),
            ],
        )
