"""Scales of the figures, the short reason tag, the description block, dataset inputs."""

from __future__ import annotations

import numpy as np
import pytest


def test_heavy_tailed_scores_get_log_spaced_bins() -> None:
    from infgate.scan.report_plots import heavy_tailed, histogram_bins

    # one value near 1.1e6 among values near 1: the case a linear axis shows as one bar
    values = np.array([0.5, 1.0, 1.0, 2.0, 1.1e6])
    assert heavy_tailed(values)
    edges, log_x = histogram_bins(values, n=4)
    assert log_x
    np.testing.assert_allclose(edges, np.geomspace(0.5, 1.1e6, 5))
    bounded = np.array([-0.9, -0.2, 0.1, 0.95])  # the ranking score: linear
    edges, log_x = histogram_bins(bounded, n=4)
    assert not log_x and not heavy_tailed(bounded)
    np.testing.assert_allclose(edges, np.linspace(-0.9, 0.95, 5))
    assert not heavy_tailed(np.array([0.0, 1.0, 1e9]))  # a zero cannot go on a log axis


def test_example_png_is_a_png_of_the_scaled_size() -> None:
    from infgate.scan.report_plots import example_png

    png = example_png(np.arange(64.0), (8, 8), scale=3)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (24, 24)
    with pytest.raises(ValueError):
        example_png(np.arange(10.0), (8, 8))


def test_short_reason_keeps_short_text_and_points_to_the_description() -> None:
    from infgate.registry.scan_run import REASON_TAG_MAX, short_reason

    assert short_reason("") == "all checks passed"
    assert short_reason("rate 0.1 > 0.05") == "rate 0.1 > 0.05"
    long = "; ".join(f"check {i} failed: observed {i}" for i in range(30))
    tag = short_reason(long)
    assert len(tag) <= REASON_TAG_MAX
    assert tag.startswith("check 0 failed")
    assert tag.endswith("(full reason in the version description)")


def test_description_block_keeps_the_users_text_and_one_run_link() -> None:
    from infgate.registry.scan_run import _with_block

    first = _with_block("Team notes.", ["**gate: BLOCKED**", "- a"], None)
    assert first.startswith("Team notes.\n\n<!-- infgate:begin -->")
    linked = _with_block(first, None, "**Scan run:** [r1](u1)")
    regated = _with_block(linked, ["**gate: PASSED**"], None)  # the link survives a re-gate
    assert regated == (
        "Team notes.\n\n<!-- infgate:begin -->\n**gate: PASSED**\n**Scan run:** [r1](u1)\n"
        "<!-- infgate:end -->"
    )
    relinked = _with_block(regated + "\n\nmore notes", None, "**Scan run:** [r2](u2)")
    assert "[r1]" not in relinked and relinked.count("[r2]") == 1
    assert relinked.endswith("<!-- infgate:end -->\n\nmore notes")


def test_scan_dataset_checks_its_fields_and_builds_an_mlflow_input() -> None:
    import json

    from infgate.errors import InvalidInputError
    from infgate.registry.scan_run import ScanDataset

    with pytest.raises(InvalidInputError, match="'test'"):
        ScanDataset("d", "/x.parquet", "abc", "test", 3)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="-1"):
        ScanDataset("d", "/x.parquet", "abc", "training", -1)
    ds = ScanDataset("d", "/tmp/x.parquet", "f" * 64, "evaluation", 3, (("a", "double"),))
    assert ScanDataset.from_dict(ds.to_dict()) == ds and len(ds.digest) == 36
    inp = ds.to_input()
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "evaluation"}
    assert json.loads(inp.dataset.schema)["mlflow_colspec"][0]["name"] == "a"
    assert json.loads(inp.dataset.profile)["num_rows"] == 3
    assert inp.dataset.source_type == "local"
