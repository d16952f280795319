"""``Store``: the findings store (scans, findings, mismatch reports, gate results).

Every write is one transaction; a failure (or a killed process) leaves no partial rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pandas as pd
from infgate.errors import InvalidInputError, NotFoundError
from infgate.store import engine as _engine
from infgate.store.models import (
    DatasetVersion,
    Finding,
    GateResult,
    MismatchReportRow,
    ModelVersion,
    QueueItem,
    Scan,
    utcnow,
)
from infgate.store.records import ScanInfo, ScanRecord
from infgate.store.rows import explanation_map, finding_values
from sqlalchemy import Engine, Integer, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["ScanInfo", "Store"]

log = logging.getLogger(__name__)

FINDINGS_FRAME_COLUMNS = [
    "finding_id",
    "example_id",
    "kind",
    "score",
    "rank",
    "given_label",
    "predicted_label",
    "suggested_label",
    "suggestion_confidence",
    "is_suspect",
]


class Store:
    """The SQL store. Create with :meth:`from_url`; run :meth:`upgrade` once per database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            engine.execution_options(infgate_read_only=True), expire_on_commit=False
        )
        self._schema_ok = False

    @classmethod
    def from_url(cls, url: str | None = None) -> Store:
        """Open the store at ``url`` (``None``: ``$INFGATE_DB_URL``, else ``sqlite:///infgate.db``)."""
        return cls(_engine.make_engine(_engine.resolve_url(url)))

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return _engine.safe_url(self.engine)

    def upgrade(self, revision: str = "head") -> str:
        """Bring the schema to ``revision`` (Alembic); returns the revision reached."""
        rev = _engine.upgrade_schema(self.engine, revision)
        self._schema_ok = False
        return rev

    def check_schema(self) -> None:
        """Raise :class:`SchemaVersionError` unless the database is at this infgate's revision."""
        if not self._schema_ok:
            _engine.verify_schema(self.engine)
            self._schema_ok = True

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        self.check_schema()
        with self._sessions.begin() as sess:
            yield sess

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reading only (SQLite: a snapshot that does not block writers)."""
        self.check_schema()
        with self._read_sessions.begin() as sess:
            yield sess

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()

    # -- scans -----------------------------------------------------------------------------

    def record_scan(self, record: ScanRecord) -> int:
        """Write a scan with its findings and mismatch report in one transaction.

        The same model name + version + dataset hash + config hash updates the stored scan
        (findings upserted by ``(kind, example_id)``; ones no longer flagged are marked
        inactive, never deleted, so queue items and decisions keep their finding).

        Returns:
            The scan id.
        """
        if not isinstance(record, ScanRecord):
            raise InvalidInputError(f"record_scan needs a ScanRecord, got {type(record).__name__}")
        explained = explanation_map(record.explanations)
        rows = [
            finding_values(record, {str(k): v for k, v in r.items()}, explained)
            for r in record.findings.to_dict("records")
        ]
        now = utcnow()
        with self.session() as s:
            dv = self._dataset_version(s, record)
            mv = _ensure_row(
                s, ModelVersion, {"name": record.model_name, "version": record.model_version}, {}
            )
            if record.run_id:
                mv.run_id = record.run_id
            fields = {
                "config": record.config,
                "method": record.method,
                "damping": float(record.damping),
                "timings": {k: float(v) for k, v in record.timings.items()},
                "status": record.status,
                "n_outputs": record.n_outputs,
                "curvature": record.curvature,
                "updated_at": now,
            }
            identity = {
                "model_version_id": mv.id,
                "dataset_version_id": dv.id,
                "config_hash": record.config_hash,
            }
            created = _insert_ignore(
                s, Scan, {**identity, **fields, "n_runs": 1, "created_at": now}
            )
            scan = s.scalar(
                select(Scan).where(*(getattr(Scan, k) == v for k, v in identity.items()))
            )
            assert scan is not None
            if not created:
                for key, value in fields.items():
                    setattr(scan, key, value)
                scan.n_runs += 1
                log.info("scan %d re-run: updating it instead of adding a new one", scan.id)
            s.flush()
            self._write_findings(s, scan.id, rows)
            self._write_mismatch(s, scan.id, record.mismatch)
            return scan.id

    @staticmethod
    def _dataset_version(s: Session, record: ScanRecord) -> DatasetVersion:
        dv = _ensure_row(
            s,
            DatasetVersion,
            {"content_hash": record.dataset_hash},
            {"n_rows": int(record.n_rows)},
        )
        dv.n_rows = int(record.n_rows)
        dv.source_uri = record.dataset_uri or dv.source_uri
        dv.classes = record.classes if record.classes is not None else dv.classes
        dv.image_shape = list(record.image_shape) if record.image_shape else dv.image_shape
        dv.feature_names = record.feature_names or dv.feature_names
        dv.columns = record.columns or dv.columns
        s.flush()
        return dv

    @staticmethod
    def _write_findings(s: Session, scan_id: int, rows: list[dict[str, Any]]) -> None:
        existing = {
            (kind, ex): fid
            for fid, kind, ex in s.execute(
                select(Finding.id, Finding.kind, Finding.example_id).where(
                    Finding.scan_id == scan_id
                )
            )
        }
        new, changed = [], []
        for row in rows:
            fid = existing.pop((row["kind"], row["example_id"]), None)
            if fid is None:
                new.append({**row, "scan_id": scan_id, "active": True})
            else:
                changed.append({**row, "id": fid, "active": True})
        if new:
            s.execute(insert(Finding), new)
        if changed:
            s.execute(update(Finding), changed)
        if existing:
            stale = [{"id": fid, "active": False} for fid in existing.values()]
            s.execute(update(Finding), stale)

    @staticmethod
    def _write_mismatch(s: Session, scan_id: int, report: dict[str, Any] | None) -> None:
        row = s.scalar(select(MismatchReportRow).where(MismatchReportRow.scan_id == scan_id))
        if report is None:
            if row is not None:
                s.delete(row)
            return

        def num(key: str) -> float | None:
            value = report.get(key)
            return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

        values = {
            "statistic": num("statistic"),
            "p_value": num("p_value"),
            "alpha": num("alpha"),
            "flagged": bool(report.get("flagged", False)),
            "method": str(report["method"]) if report.get("method") is not None else None,
            "report": report,
        }
        if row is None:
            s.add(MismatchReportRow(scan_id=scan_id, **values))
        else:
            for key, value in values.items():
                setattr(row, key, value)

    def record_gate(
        self, scan_id: int, *, verdict: Literal["passed", "blocked"], reasons: list[dict[str, Any]]
    ) -> None:
        """Append a gate verdict for ``scan_id`` (every check is kept; the newest counts)."""
        if verdict not in ("passed", "blocked"):
            raise InvalidInputError(f"verdict must be 'passed' or 'blocked', got {verdict!r}")
        if not isinstance(reasons, list) or not all(isinstance(r, dict) for r in reasons):
            raise InvalidInputError("reasons must be a list of dicts")
        with self.session() as s:
            if s.get(Scan, scan_id) is None:
                raise NotFoundError(f"no scan with id {scan_id}")
            s.add(GateResult(scan_id=scan_id, verdict=verdict, reasons=reasons))

    def get_scan(self, scan_id: int) -> ScanInfo:
        """The stored scan ``scan_id``.

        Raises:
            NotFoundError: no such scan.
        """
        with self.read_session() as s:
            scan = s.get(Scan, scan_id)
            if scan is None:
                raise NotFoundError(f"no scan with id {scan_id}")
            return self._info(s, scan)

    def latest_scan(self, model_name: str, model_version: str) -> ScanInfo | None:
        """The most recently written scan of a model version, or ``None``."""
        with self.read_session() as s:
            scan = s.scalar(
                select(Scan)
                .join(ModelVersion, Scan.model_version_id == ModelVersion.id)
                .where(ModelVersion.name == model_name, ModelVersion.version == str(model_version))
                .order_by(Scan.updated_at.desc(), Scan.id.desc())
                .limit(1)
            )
            return None if scan is None else self._info(s, scan)

    def find_scan(
        self, model_name: str, model_version: str, dataset_hash: str, config_hash: str
    ) -> ScanInfo | None:
        """The scan with exactly this identity, or ``None``."""
        with self.read_session() as s:
            scan = s.scalar(
                select(Scan)
                .join(ModelVersion, Scan.model_version_id == ModelVersion.id)
                .join(DatasetVersion, Scan.dataset_version_id == DatasetVersion.id)
                .where(
                    ModelVersion.name == model_name,
                    ModelVersion.version == str(model_version),
                    DatasetVersion.content_hash == dataset_hash,
                    Scan.config_hash == config_hash,
                )
            )
            return None if scan is None else self._info(s, scan)

    def list_scans(self, limit: int = 50) -> list[ScanInfo]:
        """The newest scans first."""
        with self.read_session() as s:
            scans = s.scalars(select(Scan).order_by(Scan.id.desc()).limit(limit)).all()
            return [self._info(s, sc) for sc in scans]

    @staticmethod
    def _info(s: Session, scan: Scan) -> ScanInfo:
        mv = s.get(ModelVersion, scan.model_version_id)
        dv = s.get(DatasetVersion, scan.dataset_version_id)
        assert mv is not None and dv is not None
        counts = s.execute(
            select(
                func.count(), func.coalesce(func.sum(Finding.is_suspect.cast(Integer)), 0)
            ).where(Finding.scan_id == scan.id, Finding.active.is_(True))
        ).one()
        mm = s.scalar(select(MismatchReportRow).where(MismatchReportRow.scan_id == scan.id))
        gate = s.scalar(
            select(GateResult)
            .where(GateResult.scan_id == scan.id)
            .order_by(GateResult.id.desc())
            .limit(1)
        )
        return ScanInfo(
            id=scan.id,
            model_name=mv.name,
            model_version=mv.version,
            run_id=mv.run_id,
            dataset_version_id=dv.id,
            dataset_hash=dv.content_hash,
            dataset_uri=dv.source_uri,
            n_rows=dv.n_rows,
            classes=dv.classes,
            image_shape=tuple(dv.image_shape) if dv.image_shape else None,  # type: ignore[arg-type]
            feature_names=dv.feature_names,
            columns=dv.columns,
            config=scan.config,
            config_hash=scan.config_hash,
            method=scan.method,
            damping=scan.damping,
            timings=scan.timings,
            status=scan.status,
            n_runs=scan.n_runs,
            n_findings=int(counts[0]),
            n_suspects=int(counts[1]),
            mismatch=None if mm is None else mm.report,
            gate=None
            if gate is None
            else {"verdict": gate.verdict, "reasons": gate.reasons, "at": gate.created_at},
            created_at=scan.created_at,
            updated_at=scan.updated_at,
            n_outputs=scan.n_outputs,
            curvature=scan.curvature,
        )

    # -- findings --------------------------------------------------------------------------

    def findings_frame(self, scan_id: int) -> pd.DataFrame:
        """The scan's active findings, most suspicious first (``finding_id`` + detection cols)."""
        return self._findings(scan_id, None, None, unreviewed=False)

    def unreviewed_findings(
        self, scan_id: int, *, kind: str = "label_error", min_score: float | None = None
    ) -> pd.DataFrame:
        """Active findings of ``kind`` with no decided queue item yet, most suspicious first."""
        return self._findings(scan_id, kind, min_score, unreviewed=True)

    def _findings(
        self, scan_id: int, kind: str | None, min_score: float | None, *, unreviewed: bool
    ) -> pd.DataFrame:
        cols = [getattr(Finding, c) for c in FINDINGS_FRAME_COLUMNS[1:]]
        stmt = select(Finding.id, *cols).where(Finding.scan_id == scan_id, Finding.active.is_(True))
        if kind is not None:
            stmt = stmt.where(Finding.kind == kind)
        if min_score is not None:
            stmt = stmt.where(Finding.score >= float(min_score))
        if unreviewed:
            done = select(QueueItem.finding_id).where(QueueItem.state == "done")
            stmt = stmt.where(Finding.id.not_in(done))
        stmt = stmt.order_by(Finding.score.desc(), Finding.id)
        with self.read_session() as s:
            if s.get(Scan, scan_id) is None:
                raise NotFoundError(f"no scan with id {scan_id}")
            rows = s.execute(stmt).all()
        return pd.DataFrame([tuple(r) for r in rows], columns=FINDINGS_FRAME_COLUMNS)


def _insert_ignore(s: Session, model: Any, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when a row was inserted.

    Two processes writing scans that share a dataset or model version at once must not
    fail on the unique constraint: PostgreSQL waits for the other insert and skips.
    """
    dialect = s.get_bind().dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(model).values(**values)
    result = s.execute(stmt.on_conflict_do_nothing().returning(model.id))
    return result.scalar() is not None


def _ensure_row(s: Session, model: Any, keys: dict[str, Any], defaults: dict[str, Any]) -> Any:
    """The row with these unique ``keys``, inserted (with ``defaults``) when missing."""
    _insert_ignore(s, model, {**keys, **defaults})
    row = s.scalar(select(model).where(*(getattr(model, k) == v for k, v in keys.items())))
    assert row is not None
    return row
