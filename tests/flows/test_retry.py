"""Which task failures the scan flow retries: transient I/O errors yes, InfgateError never
(a bad input fails the same way again; retrying it cost 21 s of delays per bad scan)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (OSError("connection reset by peer"), True),
        (TimeoutError("database did not answer"), True),
        ("DataResolutionError", False),
        ("ConfigError", False),
        ("GateBlockedError", False),
    ],
)
def test_only_transient_failures_are_retried(error: object, retried: bool) -> None:
    import infgate.errors as errors
    from infgate.flows.scan import _retry_io_only
    from prefect.states import Failed

    if isinstance(error, str):
        cls = getattr(errors, error)
        error = cls("x", []) if cls is errors.GateBlockedError else cls("bad input")
    assert _retry_io_only(None, None, Failed(data=error)) is retried


def test_a_completed_task_is_not_retried() -> None:
    from infgate.flows.scan import _retry_io_only
    from prefect.states import Completed

    assert _retry_io_only(None, None, Completed(data=3)) is False
