"""``Settings.from_env()``: the one reader of the environment.

Everything infgate takes from the process environment (service URLs, secrets, alias names,
lease limits, the device a GPU pool pins) is read here, once, into a frozen object that the
CLI, the flows and the plugins pass down. Library code below never reads ``os.environ``;
what *we* set for third-party libraries (their telemetry off, Prefect's ephemeral start-up
timeout) is in :func:`quiet_third_party_env`, also here.

Variables (all optional unless a command needs the value):

=============================== ==============================================================
``INFGATE_DB_URL``              findings store URL (default ``sqlite:///infgate.db``)
``MLFLOW_TRACKING_URI``         MLflow tracking/registry URI (default: MLflow's own rule)
``INFGATE_GATE_CONFIG``         gate thresholds YAML (default: ``infgate/gate/defaults.yaml``)
``INFGATE_SCAN_CONFIG``         a ScanConfig YAML every scan starts from
``INFGATE_DEVICE``              device for an ``auto`` influence stage (a GPU pool sets ``cuda``)
``INFGATE_DEPLOYMENT_ALIAS``    the alias a blocked version never holds (default ``champion``)
``INFGATE_REVIEW_ALIASES``      aliases whose setting starts a scan (default ``candidate``)
``INFGATE_WEBHOOK_SECRET``      the webhook's shared HMAC secret (never logged)
``INFGATE_WEBHOOK_MAX_AGE``     seconds a delivery's timestamp may be off (default 300)
``INFGATE_UI_SECRET``           session-signing key of the review page (never logged)
``INFGATE_LEASE_SECONDS``       default queue lease (default 300; bounded by the limits below)
``INFGATE_MEMORY_BUDGET_MB``    training data above this (MiB) streams under ``data.stream: auto``
                                (default 4096)
=============================== ==============================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from infgate.errors import ConfigError

__all__ = [
    "DEFAULT_DB_URL",
    "LEASE_MAX_SECONDS",
    "LEASE_MIN_SECONDS",
    "Settings",
    "check_lease_seconds",
    "quiet_third_party_env",
]

DEFAULT_DB_URL = "sqlite:///infgate.db"
# One lease range for the queue API, the CLI and the review page.
LEASE_MIN_SECONDS = 10
LEASE_MAX_SECONDS = 86_400


def check_lease_seconds(seconds: Any) -> int:
    """``seconds`` as an int inside [LEASE_MIN_SECONDS, LEASE_MAX_SECONDS], else ConfigError."""
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise ConfigError(f"lease_seconds must be an int, got {seconds!r}")
    if not LEASE_MIN_SECONDS <= seconds <= LEASE_MAX_SECONDS:
        raise ConfigError(
            f"lease_seconds must be in [{LEASE_MIN_SECONDS}, {LEASE_MAX_SECONDS}], got {seconds}"
        )
    return seconds


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {raw!r}") from None


def _names(raw: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if raw is None:
        return default
    return tuple(a.strip() for a in raw.split(",") if a.strip())


@dataclass(frozen=True)
class Settings:
    """Process-level settings (see the module docstring for the variables).

    Attributes:
        db_url: findings store URL.
        tracking_uri: MLflow tracking URI, ``None`` = MLflow's own resolution.
        gate_config_path: gate thresholds YAML, ``None`` = the packaged defaults.
        scan_config_path: a ScanConfig YAML that every scan starts from.
        device: device for an ``auto`` influence stage (``None`` = decide per machine).
        deployment_alias: the alias a blocked version never holds.
        review_aliases: aliases whose setting starts a scan.
        webhook_secret: the webhook's HMAC secret (hidden from ``repr``).
        webhook_max_age: seconds a delivery's timestamp may differ from now.
        ui_secret: the review page's session-signing key (hidden from ``repr``).
        lease_seconds: default queue lease.
        memory_budget_mb: training data whose columns take more than this many MiB
            streams from Parquet under ``data.stream: auto`` (:mod:`infgate.data.streamed`).
    """

    db_url: str = DEFAULT_DB_URL
    tracking_uri: str | None = None
    gate_config_path: str | None = None
    scan_config_path: str | None = None
    device: str | None = None
    deployment_alias: str = "champion"
    review_aliases: tuple[str, ...] = ("candidate",)
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_max_age: int = 300
    ui_secret: str | None = field(default=None, repr=False)
    lease_seconds: int = 300
    memory_budget_mb: int = 4096

    def __post_init__(self) -> None:
        if not isinstance(self.db_url, str) or not self.db_url.strip():
            raise ConfigError(f"INFGATE_DB_URL must be a database URL, got {self.db_url!r}")
        if not isinstance(self.deployment_alias, str) or not self.deployment_alias.strip():
            raise ConfigError(
                f"INFGATE_DEPLOYMENT_ALIAS must be an alias name, got {self.deployment_alias!r}"
            )
        if self.deployment_alias in self.review_aliases:
            raise ConfigError(
                f"the deployment alias {self.deployment_alias!r} cannot also be a review alias"
            )
        if self.webhook_max_age < 1:
            raise ConfigError(f"INFGATE_WEBHOOK_MAX_AGE must be >= 1, got {self.webhook_max_age}")
        check_lease_seconds(self.lease_seconds)
        if not isinstance(self.memory_budget_mb, int) or self.memory_budget_mb < 1:
            raise ConfigError(
                "INFGATE_MEMORY_BUDGET_MB must be a positive integer, got "
                f"{self.memory_budget_mb!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the environment (``environ``, default ``os.environ``) once.

        Keyword ``overrides`` that are not ``None`` win (e.g. a ``--db`` flag).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "db_url": env.get("INFGATE_DB_URL") or DEFAULT_DB_URL,
            "tracking_uri": env.get("MLFLOW_TRACKING_URI") or None,
            "gate_config_path": env.get("INFGATE_GATE_CONFIG") or None,
            "scan_config_path": env.get("INFGATE_SCAN_CONFIG") or None,
            "device": env.get("INFGATE_DEVICE") or None,
            "deployment_alias": env.get("INFGATE_DEPLOYMENT_ALIAS") or "champion",
            "review_aliases": _names(env.get("INFGATE_REVIEW_ALIASES"), ("candidate",)),
            "webhook_secret": env.get("INFGATE_WEBHOOK_SECRET") or None,
            "webhook_max_age": _int(env, "INFGATE_WEBHOOK_MAX_AGE", 300),
            "ui_secret": env.get("INFGATE_UI_SECRET") or None,
            "lease_seconds": _int(env, "INFGATE_LEASE_SECONDS", 300),
            "memory_budget_mb": _int(env, "INFGATE_MEMORY_BUDGET_MB", 4096),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the non-``None`` ``overrides`` applied (this object is unchanged)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def quiet_third_party_env(environ: Any = None) -> None:
    """Defaults we set for libraries we drive (telemetry off; a Prefect ephemeral API start-up
    timeout long enough for a loaded 2-core machine). Values a user set are kept, except a
    start-up timeout below 300 s, which is raised (Prefect's own 20 s is too short there)."""
    env = os.environ if environ is None else environ
    key = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    try:
        current = float(env.get(key) or 0)
    except ValueError:
        current = 0.0
    if current < 300:
        env[key] = "300"
    for name, value in (
        ("DO_NOT_TRACK", "1"),
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("GX_ANALYTICS_ENABLED", "false"),
        ("MLFLOW_ENABLE_ASYNC_LOGGING", "false"),
    ):
        env.setdefault(name, value)
