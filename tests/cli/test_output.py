"""Tables, values and JSON: readable on a terminal and through a pipe, nothing truncated."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from infgate.plugins.cli import _common
from rich.console import Console

LONG = "expect_column_mean_to_be_between_for_the_suspect_unreviewed_column"


def test_piped_tables_are_tsv_with_every_character(capsys: pytest.CaptureFixture[str]) -> None:
    _common.print_table(["check", "observed"], [(LONG, 0.123456), ("tab\there", None)])
    out = capsys.readouterr().out
    assert out.splitlines() == ["check\tobserved", f"{LONG}\t0.1235", "tab here\t-"]


def test_terminal_tables_fold_instead_of_truncating(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    narrow = Console(file=buffer, force_terminal=True, width=40, color_system=None)
    monkeypatch.setattr(_common, "console", narrow)
    _common.print_table(["check", "observed"], [(LONG, 1.5)], title="t")
    text = buffer.getvalue()
    assert "…" not in text
    rows = [re.split("[│┃]", line) for line in text.splitlines() if re.search("[│┃]", line)]
    first_column = [cells[1].strip() for cells in rows]
    assert first_column[0] == "check" and "".join(first_column[1:]) == LONG


def test_gate_reasons_show_check_column_observed_threshold(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from infgate.gate import GateCheck

    check = GateCheck(
        name="suspect_rate",
        suite="findings",
        success=False,
        observed=0.1234,
        threshold={"min": None, "max": 0.05},
        message="unreviewed suspected label-error rate 0.1234 above 0.05",
        column="suspect_unreviewed",
        expectation="expect_column_mean_to_be_between",
    )
    _common.gate_reasons_table([check, check.to_dict()])
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "check\tcolumn\tobserved\tthreshold",
        "suspect_rate\tsuspect_unreviewed\t0.1234\t<= 0.05",
        "suspect_rate\tsuspect_unreviewed\t0.1234\t<= 0.05",
    ]
    assert "Why the gate blocks" in captured.err  # the title stays off the TSV
    doc = _common.reasons_json([check])
    assert doc == [
        {
            "check": "suspect_rate",
            "column": "suspect_unreviewed",
            "observed": 0.1234,
            "threshold": {"min": None, "max": 0.05},
            "message": check.message,
        }
    ]


def test_missing_values_and_times_format_alike() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9)
    assert [_common.fmt(v) for v in (None, float("nan"), pd.NaT, np.nan)] == ["-"] * 4
    assert _common.fmt(pd.Timestamp(when)) == _common.fmt(when) == "2024-05-06 07:08:09"
    assert _common.fmt(2.0 / 3.0) == "0.6667" and _common.fmt(7) == "7"


def test_json_values_are_plain_json() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    doc = _common.json_value(
        {
            "a": np.int64(3),
            "b": np.float32(0.5),
            "c": pd.NaT,
            "d": math.inf,
            "e": when,
            "f": np.arange(2),
            "g": (1, "x"),
        }
    )
    assert json.loads(json.dumps(doc)) == {
        "a": 3,
        "b": 0.5,
        "c": None,
        "d": None,
        "e": "2024-05-06T07:08:09+00:00",
        "f": [0, 1],
        "g": [1, "x"],
    }


def test_passwords_in_messages_are_masked() -> None:
    text = "could not reach postgresql+psycopg2://infgate:s3cr3t@db:5432/x and http://a:b@h/"
    assert _common.mask_secrets(text) == (
        "could not reach postgresql+psycopg2://infgate:***@db:5432/x and http://a:***@h/"
    )
