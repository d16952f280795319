"""Sharded self-influence on a local 2-worker Dask cluster equals one process."""

from __future__ import annotations

import numpy as np
import pytest
from infgate.errors import InvalidInputError
from infgate.influence import InfluenceScorer
from infgate.influence.sharding import shard_bounds, sharded_self_influence

from tests.influence.approx_helpers import DAMPING, default_mlp, one_thread

__all__ = ["one_thread"]


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.mark.parametrize("method", ["exact", "ekfac", "arnoldi"])
def test_dask_shards_equal_single_process(client, method, tmp_path):
    model, x, y = default_mlp()
    sc = InfluenceScorer(
        model, (x, y), method=method, damping=DAMPING, batch_size=64, progress=False
    )
    single = sc.self_influence().scores
    res = sharded_self_influence(sc, shard_size=70, client=client, out=tmp_path / "s.npy")
    np.testing.assert_allclose(res.scores, single, rtol=1e-10)
    assert res.details["shards"] == 5 and res.details["workers"] == 2
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), single, rtol=1e-10)
    local = sharded_self_influence(sc, (x[:100], y[:100]), shard_size=33)
    np.testing.assert_allclose(local.scores, single[:100], rtol=1e-10)


def test_shard_bounds():
    assert shard_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(InvalidInputError, match="shard_size must be >= 1"):
        shard_bounds(10, 0)


def test_shards_from_a_prefect_flow_on_dask_task_runner(prefect_harness):
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner, get_dask_client

    model, x, y = default_mlp()
    sc = InfluenceScorer(model, (x, y), method="ekfac", damping=DAMPING, progress=False)

    @task
    def score(scorer: InfluenceScorer) -> np.ndarray:
        with get_dask_client() as client:
            return sharded_self_influence(scorer, shard_size=100, client=client).scores

    runner = DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "threads_per_worker": 1,
            "processes": False,
            "dashboard_address": None,
        }
    )

    @flow(task_runner=runner)
    def scan(scorer: InfluenceScorer) -> np.ndarray:
        return score.submit(scorer).result()

    np.testing.assert_allclose(scan(sc), sc.self_influence().scores, rtol=1e-10)


def test_label_error_ranking_sharded_on_dask_equals_one_sweep(client):
    from infgate.detect import find_label_errors

    model, x, y = default_mlp()
    sc = InfluenceScorer(model, (x, y), damping=DAMPING, batch_size=64, progress=False)
    single = find_label_errors(model, (x, y), scorer=sc, progress=False)
    sharded = find_label_errors(
        model, (x, y), scorer=sc, progress=False, shard_size=70, client=client
    )
    assert sharded["example_id"].tolist() == single["example_id"].tolist()
    np.testing.assert_allclose(sharded["score"], single["score"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sharded["self_influence"], single["self_influence"], rtol=1e-9)
    assert sharded["is_suspect"].tolist() == single["is_suspect"].tolist()
    local = find_label_errors(model, (x, y), scorer=sc, progress=False, shard_size=101)
    np.testing.assert_allclose(local["score"], single["score"], rtol=1e-9, atol=1e-12)
