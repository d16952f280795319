"""Bad input ends in ONE line ``error: ...`` on stderr and exit 1, never a traceback, and
never shows a password."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Outcome, Run, Seeded


def _one_line(res: Outcome, *needles: str) -> str:
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert res.code == 1, res
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_a_file_that_is_not_a_database(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not SQLite\n" * 50)
    _one_line(run("queue", "list", "--db", f"sqlite:///{path}"), "file is not a database")


def test_an_unreachable_server_never_prints_the_password(run: Run) -> None:
    url = "postgresql+psycopg2://infgate:hunter2-secret@127.0.0.1:1/infgate"
    for args in (["queue", "stats"], ["promote", "models:/m/1"], ["db", "upgrade"]):
        res = run(*args, "--db", url)
        line = _one_line(res, "cannot use the store")
        assert "hunter2" not in res.err + res.out, line


def test_a_wrong_postgresql_password(run: Run, pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    wrong = make_url(pg_url).set(password="not-the-password-42")
    url = wrong.render_as_string(hide_password=False)
    for args in (
        ["queue", "stats"],
        ["promote", "models:/m/1"],
        ["scan", "models:/m/1", "--no-flow"],
    ):
        res = run(*args, "--db", url)
        _one_line(res, "password authentication failed")
        assert "not-the-password-42" not in res.err + res.out


def test_a_url_of_another_backend(run: Run) -> None:
    res = run("queue", "list", "--db", "mysql://root:topsecret@localhost/x")
    _one_line(res, "sqlite:/// and postgresql://")
    assert "topsecret" not in res.err


def test_malformed_parquet_and_csv_data(run: Run, seeded: Seeded, tmp_path: Path) -> None:
    out = tmp_path / "fixed.parquet"
    bad_parquet = tmp_path / "broken.parquet"
    bad_parquet.write_bytes(b"PAR1 this is not really parquet PAR1")
    line = _one_line(
        run(
            "queue",
            "apply",
            "--scan",
            seeded.scan_id,
            "--data",
            bad_parquet,
            "--out",
            out,
            "--db",
            seeded.url,
        )
    )
    assert "parquet" in line.lower()
    bad_csv = tmp_path / "broken.csv"
    bad_csv.write_text('example_id,label\n"row0,1\nrow1,2,3,4\n')
    _one_line(
        run(
            "queue",
            "apply",
            "--scan",
            seeded.scan_id,
            "--data",
            bad_csv,
            "--out",
            out,
            "--db",
            seeded.url,
        )
    )
    assert not out.exists()


def test_label_studio_exports_that_are_wrong(run: Run, seeded: Seeded, tmp_path: Path) -> None:
    url = seeded.url
    _one_line(run("queue", "import", tmp_path / "missing.json", "--db", url), "missing.json")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    _one_line(run("queue", "import", deep, "--db", url), "nested too deeply")
    truncated = tmp_path / "truncated.json"
    truncated.write_text('[{"id": 1, "data": {')
    _one_line(run("queue", "import", truncated, "--db", url), "not valid JSON")
    huge = tmp_path / "huge.json"
    task = {
        "id": 10**30,
        "data": {},
        "meta": {"finding_id": 10**30},
        "annotations": [{"id": 10**30, "completed_by": 10**30, "result": []}],
    }
    huge.write_text(json.dumps([task]))
    _one_line(run("queue", "import", huge, "--db", url), "finding_id")


def test_ids_out_of_range_on_the_command_line(run: Run, seeded: Seeded) -> None:
    for args in (
        ["queue", "enqueue", str(10**30)],
        ["queue", "decide", str(10**30), "keep", "-a", "x"],
    ):
        res = run(*args, "--db", seeded.url)
        assert res.code in (1, 64) and "Traceback" not in res.err, res
        assert len([line for line in res.err.splitlines() if line.startswith("error:")]) <= 1


@pytest.mark.parametrize(
    ("flag", "content", "needle"),
    [
        ("--config", None, "does not exist"),
        ("--config", "influence: [1, 2", "not valid YAML"),
        ("--config", "influence:\n  damping: -1\n", "damping"),
        ("--config", "nonsense: {}\n", "unknown scan config section"),
        ("--gate-config", "max_suspect_rate: 7\n", "max_suspect_rate"),
        ("--gate-config", "no_such_threshold: 1\n", "no_such_threshold"),
    ],
)
def test_bad_scan_configuration(
    run: Run, tmp_path: Path, flag: str, content: str | None, needle: str
) -> None:
    path = tmp_path / "conf.yaml"
    if content is not None:
        path.write_text(content)
    res = run("scan", "models:/never/1", flag, path, "--db", f"sqlite:///{tmp_path / 's.db'}")
    _one_line(res, needle)


def test_bad_flag_values_for_the_scan(run: Run, tmp_path: Path) -> None:
    res = run("scan", "models:/never/1", "--damping", "-0.5", "--db", f"sqlite:///{tmp_path}/s.db")
    _one_line(res, "damping", "-0.5")
