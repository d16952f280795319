"""MLflow model-review hook: an HMAC-verified webhook receiver that starts scans.

``infgate hook serve`` runs it; ``infgate hook register`` creates the webhook on an MLflow
server. See :mod:`infgate.plugins.review_hook.app`.
"""

from infgate.plugins.review_hook.app import HookSettings, ScanRequest, create_app, verify_signature
from infgate.plugins.review_hook.starters import (
    DeploymentStarter,
    EmbeddedStarter,
    EventStarter,
    Starter,
)

__all__ = [
    "DeploymentStarter",
    "EmbeddedStarter",
    "EventStarter",
    "HookSettings",
    "ScanRequest",
    "Starter",
    "create_app",
    "verify_signature",
]
