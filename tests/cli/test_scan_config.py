"""``infgate scan``'s one ScanConfig: YAML, then the gate YAML's keys, then the flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from infgate.config import ScanConfig
from infgate.errors import ConfigError
from infgate.plugins.cli.scan import build_scan_config


def test_no_file_and_no_flag_is_the_default_config() -> None:
    assert build_scan_config() == ScanConfig()


def test_flags_override_the_yaml_and_the_gate_yaml_fills_the_gate(tmp_path: Path) -> None:
    scan_yaml = tmp_path / "scan.yaml"
    scan_yaml.write_text(
        "influence:\n  method: cg\n  damping: 0.5\n  batch_size: 64\n"
        "gate:\n  max_suspect_rate: 0.2\n  high_confidence: 0.9\n"
        "report:\n  top: 7\n"
    )
    gate_yaml = tmp_path / "gate.yaml"
    gate_yaml.write_text("max_suspect_rate: 0.1\n")
    cfg = build_scan_config(
        config=str(scan_yaml),
        gate_config=str(gate_yaml),
        damping=0.25,
        params=["fc.weight,fc.bias", "head"],
        device="cpu",
        shard_size=500,
        report_dir=str(tmp_path / "out"),
    )
    assert cfg.influence.method == "cg"  # from the YAML, no flag
    assert cfg.influence.damping == 0.25  # the flag wins
    assert cfg.influence.batch_size == 64
    assert cfg.influence.params == ("fc.weight", "fc.bias", "head")
    assert cfg.influence.device == "cpu" and cfg.influence.shard_size == 500
    assert cfg.gate.max_suspect_rate == 0.1  # the gate YAML's key
    assert cfg.gate.high_confidence == 0.9  # the scan YAML's, untouched by the gate YAML
    assert cfg.report.top == 7 and cfg.report.directory == str(tmp_path / "out")


def test_column_flags_fill_the_data_section(tmp_path: Path) -> None:
    scan_yaml = tmp_path / "scan.yaml"
    scan_yaml.write_text("data:\n  metadata_columns: [source]\n  image_scale: 255\n")
    cfg = build_scan_config(
        config=str(scan_yaml), feature_columns=["px0,px1", "px2"], label_column="y"
    )
    assert cfg.data.feature_columns == ("px0", "px1", "px2")
    assert cfg.data.label_column == "y" and cfg.data.metadata_columns == ("source",)
    assert cfg.data.image_scale == 255
    # the columns are part of what a scan computes from: a different choice is another scan
    assert cfg.identity_hash() != build_scan_config(config=str(scan_yaml)).identity_hash()


def test_unknown_gate_keys_are_errors(tmp_path: Path) -> None:
    gate_yaml = tmp_path / "gate.yaml"
    gate_yaml.write_text("max_supect_rate: 0.1\n")
    with pytest.raises(ConfigError, match="max_supect_rate"):
        build_scan_config(gate_config=str(gate_yaml))


def test_the_packaged_gate_defaults_are_a_valid_gate_config() -> None:
    from infgate.gate import DEFAULTS_PATH

    assert build_scan_config(gate_config=str(DEFAULTS_PATH)).gate == ScanConfig().gate
