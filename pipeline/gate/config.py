"""Gate thresholds from YAML: the packaged ``defaults.yaml``, then a user's file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infgate.config import GateConfig
from infgate.errors import ConfigError

__all__ = ["DEFAULTS_PATH", "load_gate_config"]

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")


def load_gate_config(path: str | Path | None = None, **overrides: Any) -> GateConfig:
    """Defaults, then the YAML at ``path``, then keyword ``overrides`` (``None`` skipped).

    Raises:
        ConfigError: unreadable file, unknown key or bad value (the message names it).
    """
    import yaml

    values: dict[str, Any] = {}
    for source in (DEFAULTS_PATH, path):
        if not source:
            continue
        p = Path(source)
        if not p.is_file():
            raise ConfigError(f"gate config {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"gate config {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"gate config {str(p)!r} must be a mapping, got {type(loaded).__name__}"
            )
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = set(GateConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown gate setting(s) {unknown}; known: {sorted(known)}")
    return GateConfig(**values)
