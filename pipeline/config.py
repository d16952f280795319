"""One scan configuration, carried whole: :class:`ScanConfig` and its frozen parts.

A ``ScanConfig`` is built once (from YAML, a dict, CLI flags or a Prefect parameter), logged
whole as MLflow params, stored with the scan, and handed unchanged to every stage. Each part
is a frozen dataclass validated in ``__post_init__``; nothing here mutates what a caller
passed in (``with_overrides`` returns a new object).

Identity: :meth:`ScanConfig.identity` is what a scan *computes* from (data, influence,
detection, mismatch): the stored scan is reused, and Prefect's cache hit, only when it is
equal. The gate and report parts change what is decided and shown, never the scores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from infgate.errors import ConfigError

__all__ = [
    "DataConfig",
    "DetectConfig",
    "GateConfig",
    "InfluenceConfig",
    "MismatchConfig",
    "ReportConfig",
    "ScanConfig",
    "config_hash",
]

LossName = Literal["cross_entropy", "mse"]
_LOSSES = ("cross_entropy", "mse")


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of a config dict's canonical JSON (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _positive_int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner} `{name}` must be an int >= {minimum}, got {value!r}")


def _fraction(owner: str, name: str, value: Any, *, open_: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = 0.0 < value < 1.0 if open_ else 0.0 <= value <= 1.0
    if not ok:
        bounds = "(0, 1)" if open_ else "[0, 1]"
        raise ConfigError(f"{owner} `{name}` must be in {bounds}, got {value!r}")


def _names_or_none(owner: str, name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{owner} `{name}` must be a list of column names, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class DataConfig:
    """How the training (and evaluation) data is read. Every field is optional: unset fields
    come from the model version's tags (``infgate.feature_columns``...), then the model's MLflow
    signature, then the data (all numeric columns but the label, the id, the true label and
    metadata); see :mod:`infgate.data.columns`.

    Attributes:
        feature_columns: the model's input columns, in order.
        input_shape: the per-example input shape, without the batch dimension (``[1, 8, 8]``).
        metadata_columns: columns that are never features (besides id and labels).
        token_columns: integer token-id columns (or one list column), kept int64.
        label_column: the class-index column (``None``: the tag, else ``label``).
        image_scale: divide decoded pixels by this (e.g. 255); ``None`` keeps them as stored.
        input_dtype: ``"auto"`` (int64 for tokens, else float32), ``"float32"`` or ``"int64"``.
        pad_token_id: pad one list column of token sequences of different lengths with this
            id, to ``input_shape`` or the longest training sequence (``None``: the tag
            ``infgate.pad_token_id``, else the ``padding_idx`` of the model's embeddings).
        model_inputs: the list columns a model with several inputs takes, in the order of
            its arguments (``None``: the tag ``infgate.model_inputs``, else the signature's
            input names); see :class:`infgate.data.columns.ColumnOptions`.
        use_signature: read columns and shape from the model's MLflow signature.
        stream: ``"auto"`` (default: stream a Parquet training file with more than
            1,000,000 rows or whose columns exceed ``Settings.memory_budget_mb``, see
            :func:`infgate.data.streamed.should_stream`), ``"always"`` (Parquet only) or
            ``"never"`` (read whole). A streamed scan gives the same findings as an
            in-memory one; it only changes what is held in memory.
    """

    feature_columns: tuple[str, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    metadata_columns: tuple[str, ...] = ()
    token_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    image_scale: float | None = None
    input_dtype: Literal["auto", "float32", "int64"] = "auto"
    pad_token_id: int | None = None
    model_inputs: tuple[str, ...] | None = None
    use_signature: bool = True
    stream: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self) -> None:
        if self.stream not in ("auto", "always", "never"):
            raise ConfigError(f"data `stream` must be auto, always or never, got {self.stream!r}")
        for name in ("feature_columns", "token_columns", "model_inputs"):
            object.__setattr__(self, name, _names_or_none("data", name, getattr(self, name)))
        object.__setattr__(
            self,
            "metadata_columns",
            _names_or_none("data", "metadata_columns", self.metadata_columns) or (),
        )
        if self.input_shape is not None:
            shape = self.input_shape
            ok = isinstance(shape, list | tuple) and all(
                isinstance(v, int) and not isinstance(v, bool) and (v > 0 or (i == 0 and v == -1))
                for i, v in enumerate(shape)
            )
            if not ok or not shape:
                raise ConfigError(f"data `input_shape` must be positive ints, got {shape!r}")
            object.__setattr__(self, "input_shape", tuple(shape))
        if self.image_scale is not None and not (
            isinstance(self.image_scale, int | float) and self.image_scale > 0
        ):
            raise ConfigError(f"data `image_scale` must be positive, got {self.image_scale!r}")
        if self.input_dtype not in ("auto", "float32", "int64"):
            raise ConfigError(
                f"data `input_dtype` must be auto, float32 or int64, got {self.input_dtype!r}"
            )
        pad = self.pad_token_id
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 0):
            raise ConfigError(f"data `pad_token_id` must be an int >= 0, got {pad!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in (
            "feature_columns",
            "input_shape",
            "metadata_columns",
            "token_columns",
            "model_inputs",
        ):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    def column_options(self) -> dict[str, Any]:
        """The fields as keyword arguments of :class:`infgate.data.columns.ColumnOptions`."""
        d: dict[str, Any] = {
            "feature_columns": self.feature_columns,
            "input_shape": self.input_shape,
            "metadata_columns": self.metadata_columns,
            "token_columns": self.token_columns,
            "image_scale": self.image_scale,
            "input_dtype": self.input_dtype,
            "pad_token_id": self.pad_token_id,
            "model_inputs": self.model_inputs,
        }
        if self.label_column:
            d["label_column"] = self.label_column
        return d


@dataclass(frozen=True)
class InfluenceConfig:
    """How the influence stage runs.

    Attributes:
        method: curvature back-end: ``"auto"`` (picks from the parameter count and the layer
            kinds; what it chose and why is in the scan result), ``"exact"`` or any registered
            approximate one (``cg``, ``lissa``, ``arnoldi``, ``kfac``, ``ekfac``, ``tracin``).
        damping: lambda added to the curvature. ``None`` = the weight decay the training run
            logged (when ``damping_from_run`` and the run has one), else the back-end's
            documented rule (exact: 1e-3 x mean eigenvalue). The value used is reported.
        damping_from_run: take ``damping`` from the training run's logged weight decay.
        batch_size: examples per streamed batch (memory grows with it, not with n).
        device: ``"auto"`` (CUDA when torch sees it), ``"cpu"`` or ``"cuda[:N]"``.
        params: parameter names (or module-name prefixes) to differentiate; ``None`` = all
            trainable parameters.
        loss: the training loss: ``"cross_entropy"`` or ``"mse"``.
        backend_options: extra options for the back-end (e.g. ``{"curvature": "hessian"}``).
        shard_size: on a Dask cluster, training sets above this many rows have their
            per-example sweep scored in shards of this size (curvature fitted once).
    """

    method: str = "auto"
    damping: float | None = None
    damping_from_run: bool = True
    batch_size: int = 256
    device: str = "auto"
    params: tuple[str, ...] | None = None
    loss: LossName = "cross_entropy"
    backend_options: dict[str, Any] = field(default_factory=dict)
    shard_size: int = 20_000

    def __post_init__(self) -> None:
        d = self.damping
        if d is not None and not (
            isinstance(d, int | float) and not isinstance(d, bool) and math.isfinite(d) and d > 0
        ):
            raise ConfigError(f"`damping` must be None or positive, got {d!r}")
        _positive_int("influence", "batch_size", self.batch_size)
        _positive_int("influence", "shard_size", self.shard_size)
        if not isinstance(self.method, str) or not self.method:
            raise ConfigError(f"`method` must be a back-end name, got {self.method!r}")
        if self.loss not in _LOSSES:
            raise ConfigError(f"`loss` must be one of {list(_LOSSES)}, got {self.loss!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"`device` must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.params is not None:
            if isinstance(self.params, str):
                object.__setattr__(self, "params", (self.params,))
            object.__setattr__(self, "params", tuple(str(p) for p in self.params))
            if not self.params:
                raise ConfigError("`params` must be None (all) or a non-empty list of names")
        if not isinstance(self.backend_options, dict):
            raise ConfigError(f"`backend_options` must be a mapping, got {self.backend_options!r}")
        object.__setattr__(self, "backend_options", dict(self.backend_options))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (MLflow params, the store)."""
        d = dataclasses.asdict(self)
        d["params"] = list(self.params) if self.params is not None else None
        return d


@dataclass(frozen=True)
class DetectConfig:
    """How label errors are ranked, stored, explained and queued.

    Attributes:
        method: the ranking (``find_label_errors(method=...)``; default the documented one).
        options: extra keyword options for ``find_label_errors``.
        store_top: besides every suspect, store this many top-ranked rows as findings.
        explain_top: explain this many top suspects (supporting/opposing examples); 0 = off.
        explain_k: supporting and opposing training examples listed per explained suspect.
        enqueue: put the scan's suspects in the relabel queue.
        noise_calibration: where the label-noise model behind the suspect count and the
            suggestion confidence takes its calibration from: ``"auto"`` (labelled
            evaluation data of 30 rows or more, its labels taken as correct; else the
            training labels), ``"eval"`` (require it) or ``"train"`` (for evaluation data
            labelled as noisily as the training data);
            :class:`infgate.detect.calibrate.NoiseModelOptions`.
        noise_posterior: the clean posterior of the training rows behind the count, with
            the evaluation calibration: ``"auto"`` (the model's leave-one-out outputs
            stacked with the nearest evaluation rows' votes when those outputs look
            out-of-sample, else the votes alone), ``"both"``, ``"model"`` or
            ``"neighbours"``.
    """

    method: str = "default"
    options: dict[str, Any] = field(default_factory=dict)
    store_top: int = 100
    explain_top: int = 20
    explain_k: int = 5
    enqueue: bool = True
    noise_calibration: str = "auto"
    noise_posterior: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ConfigError(f"detect `method` must be a ranking name, got {self.method!r}")
        if self.noise_calibration not in ("auto", "eval", "train"):
            raise ConfigError(
                "detect `noise_calibration` must be one of auto, eval, train, got "
                f"{self.noise_calibration!r}"
            )
        if self.noise_posterior not in ("auto", "model", "neighbours", "both"):
            raise ConfigError(
                "detect `noise_posterior` must be one of auto, model, neighbours, both, got "
                f"{self.noise_posterior!r}"
            )
        if not isinstance(self.options, dict):
            raise ConfigError(f"detect `options` must be a mapping, got {self.options!r}")
        for name in ("store_top", "explain_top"):
            _positive_int("detect", name, getattr(self, name), minimum=0)
        _positive_int("detect", "explain_k", self.explain_k)
        if not isinstance(self.enqueue, bool):
            raise ConfigError(f"detect `enqueue` must be true or false, got {self.enqueue!r}")
        object.__setattr__(self, "options", dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MismatchConfig:
    """The train-vs-evaluation domain-mismatch test (run when a scan has evaluation data).

    Attributes:
        alpha: level of the dataset-level test and FDR of the per-example flags; the gate
            blocks on the test's own decision at this level.
        n_permutations: permutations per MMD test.
        max_reference: at most this many training rows enter the tests (random subset).
        seed: seeds the subsampling and permutations.
    """

    alpha: float = 0.05
    n_permutations: int = 500
    max_reference: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        _fraction("mismatch", "alpha", self.alpha, open_=True)
        _positive_int("mismatch", "n_permutations", self.n_permutations)
        _positive_int("mismatch", "max_reference", self.max_reference, minimum=2)
        _positive_int("mismatch", "seed", self.seed, minimum=0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GateConfig:
    """Gate thresholds (documented, with the same defaults, in ``infgate/gate/defaults.yaml``).

    Attributes:
        max_suspect_rate: largest allowed fraction of unreviewed suspected label errors.
        high_confidence: suggestion confidence at which a suspect counts as high-confidence.
        max_unreviewed_high_confidence: unreviewed high-confidence suspects tolerated.
        check_row_count: compare the row count with the one MLflow registered.
    """

    max_suspect_rate: float = 0.05
    high_confidence: float = 0.95
    max_unreviewed_high_confidence: int = 0
    check_row_count: bool = True

    def __post_init__(self) -> None:
        _fraction("gate", "max_suspect_rate", self.max_suspect_rate)
        _fraction("gate", "high_confidence", self.high_confidence)
        _positive_int(
            "gate", "max_unreviewed_high_confidence", self.max_unreviewed_high_confidence, 0
        )
        if not isinstance(self.check_row_count, bool):
            raise ConfigError(
                f"gate `check_row_count` must be true or false, got {self.check_row_count!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ReportConfig:
    """What the report shows and where it goes.

    Attributes:
        top: rows in the report's and the Prefect artifact's top-suspects tables.
        directory: where report files go (``None`` = a new temporary directory).
        log_to_mlflow: log the report, metrics and the whole config as an MLflow scan run.
    """

    top: int = 20
    directory: str | None = None
    log_to_mlflow: bool = True

    def __post_init__(self) -> None:
        _positive_int("report", "top", self.top)
        if self.directory is not None:
            object.__setattr__(self, "directory", str(self.directory))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_PARTS: dict[str, type] = {
    "data": DataConfig,
    "influence": InfluenceConfig,
    "detect": DetectConfig,
    "mismatch": MismatchConfig,
    "gate": GateConfig,
    "report": ReportConfig,
}


def _build(part: str, cls: type, raw: Any) -> Any:
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"scan config `{part}` must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown {part} option(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**raw)
    except TypeError as exc:  # a wrong type that __post_init__ could not name
        raise ConfigError(f"scan config `{part}`: {exc}") from None


@dataclass(frozen=True)
class ScanConfig:
    """Everything one scan is configured by; see the parts for each option."""

    data: DataConfig = field(default_factory=DataConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    mismatch: MismatchConfig = field(default_factory=MismatchConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        for name, cls in _PARTS.items():
            object.__setattr__(self, name, _build(name, cls, getattr(self, name)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ScanConfig:
        """From a nested dict (YAML, JSON, a Prefect parameter); unknown keys are errors."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(_PARTS))
        if unknown:
            raise ConfigError(f"unknown scan config section(s) {unknown}; known: {list(_PARTS)}")
        return cls(**{k: _build(k, _PARTS[k], v) for k, v in raw.items()})

    @classmethod
    def from_yaml(cls, path: str | Path) -> ScanConfig:
        """From a YAML file with any of the sections ``data, influence, detect, mismatch,
        gate, report``."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"scan config {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"scan config {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            kind = type(loaded).__name__
            raise ConfigError(f"scan config {str(p)!r} must be a mapping, got {kind}")
        return cls.from_dict(loaded)

    def with_overrides(self, **flat: Any) -> ScanConfig:
        """A new config with ``section__option=value`` (or ``"section.option"`` via ``**{}``)
        overrides applied; ``None`` values are skipped (unset CLI flags)."""
        merged = self.to_dict()
        for key, value in flat.items():
            if value is None:
                continue
            section, sep, option = key.replace("__", ".").partition(".")
            if not sep or section not in _PARTS:
                raise ConfigError(
                    f"override {key!r} must be 'section.option' with a section of {list(_PARTS)}"
                )
            merged[section][option] = value
        return ScanConfig.from_dict(merged)

    def to_dict(self) -> dict[str, Any]:
        """Nested JSON-friendly dict (stored with the scan, a Prefect parameter)."""
        return {name: getattr(self, name).to_dict() for name in _PARTS}

    def identity(self) -> dict[str, Any]:
        """The parts the scores depend on (data, influence, detect, mismatch)."""
        d = self.to_dict()
        d["data"] = {k: v for k, v in d["data"].items() if k != "stream"}  # same scores
        return {k: d[k] for k in ("data", "influence", "detect", "mismatch")}

    def identity_hash(self) -> str:
        """Hash of :meth:`identity`: same model version, data and this hash = same scan."""
        return config_hash(self.identity())

    def flat_params(self) -> dict[str, Any]:
        """``{"influence.method": "auto", ...}``: the whole config as MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out
