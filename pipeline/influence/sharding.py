"""Sharded self-influence on Dask: fit the curvature once, score shards anywhere, merge in order.

The fitted scorer (model, objective, selected parameters and the fitted back-end) is sent to
every worker once (``client.scatter(..., broadcast=True)``); each shard of the dataset is
scored independently with the same code path as a single process, and the scores are written
into their dataset positions as shards finish, optionally straight into a ``.npy`` file on
disk (``out=``) so the driver never holds more than one shard's results in flight.

Use it with a ``dask.distributed`` client, or from a Prefect flow that runs on
``prefect_dask.DaskTaskRunner``::

    from prefect_dask import get_dask_client

    @task
    def score(scorer):
        with get_dask_client() as client:
            return sharded_self_influence(scorer, client=client, shard_size=50_000)

Without a client the shards run one after another in this process (same results).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from infgate.data.streamed import StreamedTrainingData
from infgate.data.training import EvalData, TrainingData
from infgate.errors import InvalidInputError
from infgate.influence.api import InfluenceResult, InfluenceScorer
from infgate.influence.backends.base import Backend
from infgate.influence.batches import BatchSource, DatasetLike
from infgate.influence.gradients import GradientEngine
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["FittedCurvature", "map_shards", "shard_bounds", "sharded_self_influence"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# ``functional_call`` swaps parameters on the module while it runs, so two threads of one
# process must not score with the same model at once. Worker *processes* (LocalCluster's
# default) each hold their own copy and run in parallel; threads of one process take turns.
_SCORE_LOCK = threading.Lock()


@dataclass(frozen=True)
class FittedCurvature:
    """What a worker needs to score a shard: the engine and the fitted back-end."""

    engine: GradientEngine
    backend: Backend
    batch_size: int
    threads: int | None = None

    def __call__(self, data: DatasetLike, start: int) -> tuple[int, np.ndarray]:
        return self.score(data, start)

    def score(self, data: DatasetLike, start: int) -> tuple[int, np.ndarray]:
        """Self-influence of one shard; returns ``(start, scores)``."""
        with _SCORE_LOCK:
            return self._score_unlocked(data, start)

    def _score_unlocked(self, data: DatasetLike, start: int) -> tuple[int, np.ndarray]:
        source = self.batches(data, start)
        return start, self.backend.self_influence(self.engine, source, progress=False)

    def batches(self, data: DatasetLike, start: int) -> BatchSource:
        """The shard's batches, after applying ``threads`` (call under ``_SCORE_LOCK``)."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        return BatchSource(
            data,
            batch_size=self.batch_size,
            device=self.engine.device,
            dtype=self.engine.dtype,
            what=f"shard at {start}",
        )


def _run(
    job: Callable[[DatasetLike, int], tuple[int, T]], data: DatasetLike, start: int
) -> tuple[int, T]:
    return job(data, start)


def _n_workers(client: Client | None) -> int:
    if client is None:
        return 1
    return len(client.scheduler_info().get("workers", {})) or 1


def map_shards(
    job: Callable[[DatasetLike, int], tuple[int, T]],
    data: DatasetLike,
    n: int,
    *,
    shard_size: int,
    client: Client | None = None,
    bar: Any = None,
    desc: str = "shards",
    progress: bool = False,
    scattered: Any = None,
) -> Iterator[tuple[int, T]]:
    """Run ``job(shard, start)`` on every shard of ``data``; yield ``(start, result)``.

    With a Dask ``client`` the job (holding the fitted curvature) is scattered to every
    worker once, each shard is one task, and results arrive as shards finish (any order;
    ``start`` says where each belongs). Without one, shards run here, in order. ``bar``
    (a tqdm bar counting examples) is advanced as shards finish; otherwise one is made
    from ``desc``/``progress``. ``scattered``: the job already scattered to the workers.
    """
    bounds = shard_bounds(n, shard_size)
    own = bar is None
    if own:
        bar = tqdm(total=n, desc=desc, unit="ex", disable=not progress, leave=False)
    try:
        if client is None:
            for start, stop in bounds:
                out = job(_slice(data, start, stop), start)
                bar.update(stop - start)
                yield out
            return
        from distributed import as_completed

        shared = scattered if scattered is not None else client.scatter(job, broadcast=True)
        futures = [
            client.submit(_run, shared, client.scatter(_slice(data, a, b)), a, pure=False)
            for a, b in bounds
        ]
        for fut in as_completed(futures):
            start, result = fut.result()
            bar.update(min(start + shard_size, n) - start)
            fut.release()
            yield start, result
    finally:
        if own:
            bar.close()


def shard_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in order."""
    if shard_size < 1:
        raise InvalidInputError(f"shard_size must be >= 1, got {shard_size!r}")
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def _slice(data: DatasetLike, start: int, stop: int) -> DatasetLike:
    if isinstance(data, StreamedTrainingData):  # read the shard's rows (one partial pass)
        rows = np.arange(start, stop)
        return (torch.as_tensor(data.take(rows)), torch.as_tensor(data.labels[start:stop]))
    if isinstance(data, TrainingData):
        x, y = data.as_tensors()
        return (x[start:stop], y[start:stop])
    if isinstance(data, EvalData):
        if data.labels is None:
            raise InvalidInputError("data has no labels; gradients of the loss need them")
        return (
            torch.as_tensor(data.features[start:stop]),
            torch.as_tensor(data.labels[start:stop]),
        )
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = (torch.as_tensor(v) for v in data)
        return (x[start:stop], y[start:stop])
    if isinstance(data, Dataset):
        return Subset(data, range(start, stop))
    raise InvalidInputError(
        f"data must be a torch Dataset, a (features, labels) pair or TrainingData; got "
        f"{type(data).__name__}"
    )


def sharded_self_influence(
    scorer: InfluenceScorer,
    data: DatasetLike | None = None,
    *,
    shard_size: int = 10_000,
    client: Client | None = None,
    out: str | os.PathLike[str] | None = None,
    threads_per_task: int | None = None,
) -> InfluenceResult:
    """Self-influence of ``data`` (default: the scorer's training data) in shards.

    Args:
        scorer: a fitted :class:`InfluenceScorer` (its curvature is reused, never refitted).
        data: the examples to score, in the forms the scorer accepts.
        shard_size: examples per shard (one Dask task each).
        client: a ``dask.distributed`` client; ``None`` runs shards in this process.
        out: optional ``.npy`` path; scores are written there shard by shard (memory-mapped)
            and the returned result's ``scores`` is that memory map.
        threads_per_task: ``torch.set_num_threads`` inside each task (e.g. 1 when every
            worker process has one core).

    Returns:
        :class:`InfluenceResult` with scores in dataset order, equal to
        ``scorer.self_influence(data)`` up to floating-point summation order.
    """
    source = scorer.train if data is None else scorer.batches(data)
    raw: DatasetLike = data if data is not None else scorer.train_data
    n = len(source)
    bounds = shard_bounds(n, shard_size)
    job = FittedCurvature(scorer.engine, scorer.backend, scorer.batch_size, threads_per_task)
    if out is not None:
        scores: np.ndarray = np.lib.format.open_memmap(
            os.fspath(out), mode="w+", dtype=np.float64, shape=(n,)
        )
    else:
        scores = np.empty(n, dtype=np.float64)
    t0 = time.perf_counter()
    bar = tqdm(
        total=n,
        desc=f"self-influence shards ({scorer.backend.name})",
        unit="ex",
        disable=not scorer.progress,
        leave=False,
    )
    shared = _shared_job(scorer, client, job) if client is not None else None
    for start, s in map_shards(
        job, raw, n, shard_size=shard_size, client=client, bar=bar, scattered=shared
    ):
        scores[start : start + len(s)] = s
    workers = _n_workers(client)
    bar.close()
    if isinstance(scores, np.memmap):
        scores.flush()
    score_s = time.perf_counter() - t0
    log.info(
        "scored %d examples in %d shard(s) on %d worker(s) in %.2fs",
        n,
        len(bounds),
        workers,
        score_s,
    )
    details: dict[str, Any] = {
        **scorer.backend.describe(),
        "shards": len(bounds),
        "shard_size": shard_size,
        "workers": workers,
    }
    if scorer.auto:
        details["auto"] = scorer.auto
    return InfluenceResult(
        scores=scores,
        method=scorer.backend.name,
        damping=scorer.backend.damping,
        n_params=scorer.engine.n_params,
        device=str(scorer.device),
        timings={
            "fit": scorer.fit_seconds,
            "score": score_s,
            "total": scorer.fit_seconds + score_s,
        },
        details=details,
    )


def _shared_job(scorer: InfluenceScorer, client: Client, job: FittedCurvature) -> Any:
    """Scatter the fitted curvature to every worker once per (scorer, client, threads)."""
    cache: dict[tuple[str, int | None], Any] = scorer.__dict__.setdefault("_dask_jobs", {})
    key = (str(client.id), job.threads)
    if key not in cache:
        cache[key] = client.scatter(job, broadcast=True)
    return cache[key]
