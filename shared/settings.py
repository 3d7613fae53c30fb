"""Settings for every mailops process, read from `MAILOPS_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values shipped as defaults: fine on a laptop, refused anywhere else.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "mailops-dev-master-password", "mailops-dev-credential-secret"}
)


def _default_mail_uid() -> int:
    # Dovecot will not store mail as root; Debian's `mail` user (uid 8) always exists.
    return 8 if os.geteuid() == 0 else os.geteuid()


def _default_mail_gid() -> int:
    return 8 if os.geteuid() == 0 else os.getegid()


class Settings(BaseSettings):
    """One settings object; each field is `MAILOPS_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MAILOPS_", env_file=".env", extra="ignore")

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

    # --- provisioning ---
    # Keys the derivation of pickup tokens and generated passwords (never stored).
    credential_secret: SecretStr = SecretStr("mailops-dev-credential-secret")
    credential_ttl_seconds: int = 7 * 86400
    # A deleted mailbox's mail is kept (and its address reserved) this long, then purged.
    deleted_mailbox_retention_seconds: int = 30 * 86400

    # --- backup ---

    # --- monitor ---

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        for name in ("master_password", "credential_secret"):
            secret: SecretStr = getattr(self, name)
            if secret.get_secret_value() in PLACEHOLDER_SECRETS:
                raise ValueError(
                    f"MAILOPS_{name.upper()} is a placeholder; set a real secret in production"
                )
        return self

    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir.expanduser().resolve()


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
