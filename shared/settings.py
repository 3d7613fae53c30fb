"""Settings for every mailops process, read from `MAILOPS_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values shipped as defaults: fine on a laptop, refused anywhere else.
PLACEHOLDER_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "mailops-dev-master-password",
        "mailops-dev-credential-secret",
        "mailops-dev-backup-key",
    }
)


# Names a backup key; stored with every blob sealed under it.
KeyId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]


def _default_mail_uid() -> int:
    # Dovecot will not store mail as root; Debian's `mail` user (uid 8) always exists.
    return 8 if os.geteuid() == 0 else os.geteuid()


def _default_mail_gid() -> int:
    return 8 if os.geteuid() == 0 else os.getegid()


class Settings(BaseSettings):
    """One settings object; each field is `MAILOPS_<NAME>` in the environment."""

    # hide_input_in_errors: a refused setting's error would print the environment it was
    # read from, secrets included (a too-short backup key showed most of itself).
    model_config = SettingsConfigDict(
        env_prefix="MAILOPS_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/mailops"
    redis_url: str = "redis://127.0.0.1:6379/0"
    state_dir: Path = Path("./.mailops")

    # Where clients reach Dovecot (IMAP, LMTP, ManageSieve) and Postfix (SMTP), and the
    # address the daemons listen on: all loopback here, service names in compose.
    mail_host: str = "127.0.0.1"
    smtp_host: str = "127.0.0.1"
    mail_listen: str = "127.0.0.1"
    hostname: str = "mail.mailops.localhost"
    imap_port: int = 1143
    smtp_port: int = 1025
    lmtp_port: int = 1024
    sieve_port: int = 14190
    trusted_networks: str = "127.0.0.0/8"
    auth_penalty: bool = True
    master_user: str = "mailops-master"
    master_password: SecretStr = SecretStr("mailops-dev-master-password")
    mail_uid: int = Field(default_factory=_default_mail_uid)
    mail_gid: int = Field(default_factory=_default_mail_gid)

    provisioning_url: str = "http://127.0.0.1:8001"
    backup_url: str = "http://127.0.0.1:8002"
    monitor_url: str = "http://127.0.0.1:8003"

    log_level: str = "INFO"
    # Redis key prefix of the job queues; test sessions use their own to run side by side.
    queue_prefix: str = "mailops"
    # How long a running job's claim outlives its worker: a worker killed mid-job (a crash,
    # the OOM killer) has its job run again by any worker this long after, not after the
    # job's whole timeout. The claim is renewed every quarter of it while the job runs.
    job_lease_seconds: float = Field(default=120, gt=0)

    # --- provisioning ---
    # Keys the derivation of pickup tokens and generated passwords (never stored).
    credential_secret: SecretStr = SecretStr("mailops-dev-credential-secret")
    credential_ttl_seconds: int = 7 * 86400
    # A deleted mailbox's mail is kept (and its address reserved) this long, then purged.
    deleted_mailbox_retention_seconds: int = 30 * 86400

    # --- backup ---
    # Every stored blob is encrypted (AES-256-GCM) under a key derived from this secret; the
    # key id is stored with each blob, so a new key can take over while old ones still read.
    backup_key: SecretStr = SecretStr("mailops-dev-backup-key")
    backup_key_id: KeyId = "k1"
    # Retired keys that still decrypt older blobs: `{"k0": "old secret"}`. Prune re-seals
    # those blobs under the current key; once it reports none left, a retired key can go.
    backup_previous_keys: dict[KeyId, SecretStr] = {}
    # The default policy of a department without a `backup_policies` row.
    backup_interval_seconds: int = Field(default=86400, ge=60)
    backup_keep_last: int = Field(default=7, ge=1)
    backup_keep_daily: int = Field(default=14, ge=0)
    backup_keep_weekly: int = Field(default=8, ge=0)
    backup_keep_monthly: int = Field(default=12, ge=0)
    # IMAP connections a worker opens in parallel (one mailbox or folder each).
    backup_imap_connections: int = Field(default=4, ge=1, le=32)
    backup_zstd_level: int = Field(default=3, ge=1, le=19)

    # --- monitor ---
    # The probe mailbox the imap and delivery checks use; empty: `probe@<first domain>`.
    monitor_probe_address: str = ""
    # Incidents open after this many consecutive failures and resolve after this many passes.
    monitor_failure_threshold: int = Field(default=2, ge=1)
    monitor_recovery_threshold: int = Field(default=2, ge=1)
    # Incident notifications: JSON POSTed to each URL, retried with backoff.
    monitor_webhook_urls: list[str] = []
    monitor_webhook_max_tries: int = Field(default=6, ge=1)
    monitor_check_timeout_seconds: float = 10.0
    # Run intervals overriding a check's default, e.g. {"tls": 86400, "quota": 300}; at
    # least 60 s, since the scheduler ticks once a minute.
    monitor_check_intervals: dict[str, Annotated[int, Field(ge=60)]] = {}
    monitor_imap_warn_seconds: float = 1.0
    monitor_delivery_warn_seconds: float = 5.0
    monitor_delivery_crit_seconds: float = 20.0
    monitor_queue_warn_messages: int = 100
    monitor_queue_crit_messages: int = 1000
    monitor_queue_warn_age_seconds: float = 1800.0
    monitor_queue_crit_age_seconds: float = 4 * 3600.0
    # TLS endpoints as `host:port` (implicit TLS) or `smtp://host:port` / `imap://host:port`
    # (STARTTLS); days to certificate expiry.
    monitor_tls_endpoints: list[str] = []
    monitor_tls_warn_days: float = 21.0
    monitor_tls_crit_days: float = 7.0
    monitor_quota_warn_ratio: float = 0.80
    monitor_quota_crit_ratio: float = 0.95
    # A mailbox's snapshot may be this much older than its policy interval before it is stale.
    monitor_backup_grace_seconds: int = 3600
    monitor_backup_failed_runs_window_seconds: int = 86400
    # `/readyz` URLs the platform check calls; empty: the three services' URLs.
    monitor_readyz_urls: list[str] | None = None
    # Disks whose free space the platform check reports; empty: the stack's state dir.
    monitor_disk_paths: list[Path] = []
    monitor_disk_warn_free_ratio: float = 0.15
    monitor_disk_crit_free_ratio: float = 0.05
    monitor_queue_warn_jobs: int = 1000
    # DNS posture: resolver `ip` or `ip:port` (empty: the system's), the DKIM selector, and
    # the domains to check (empty: every domain in the database).
    monitor_dns_resolver: str = ""
    monitor_dkim_selector: str = "mail"
    monitor_dns_domains: list[str] = []
    monitor_dns_timeout_seconds: float = 2.0
    # How long a `/metrics` scrape may reuse the latest results it read from the database.
    monitor_metrics_cache_seconds: float = 5.0

    @model_validator(mode="after")
    def _one_secret_per_key_id(self) -> Settings:
        if self.backup_key_id in self.backup_previous_keys:
            raise ValueError(
                f"MAILOPS_BACKUP_PREVIOUS_KEYS names the current key id {self.backup_key_id!r}; "
                "give the new key an id of its own"
            )
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        # Salted SHA-512 (shared/passwords.py) and HKDF (the backup key) stretch nothing: the
        # secrets must be long and random themselves. A backup key is all that keeps every
        # stored message secret, so it gets the most.
        secrets = [
            ("MAILOPS_MASTER_PASSWORD", self.master_password, 24),
            ("MAILOPS_CREDENTIAL_SECRET", self.credential_secret, 24),
            ("MAILOPS_BACKUP_KEY", self.backup_key, 32),
            *(
                (f"MAILOPS_BACKUP_PREVIOUS_KEYS[{key_id!r}]", key, 32)
                for key_id, key in self.backup_previous_keys.items()
            ),
        ]
        for name, secret, length in secrets:
            if secret.get_secret_value() in PLACEHOLDER_SECRETS:
                raise ValueError(f"{name} is a placeholder; set a real secret in production")
            if len(secret.get_secret_value()) < length:
                raise ValueError(
                    f"{name} must be a random secret of {length} or more characters "
                    "(e.g. `openssl rand -base64 32`)"
                )
        return self

    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir.expanduser().resolve()


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
