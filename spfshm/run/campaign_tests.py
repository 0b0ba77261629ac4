"""The campaign as pytest tests (one per seed); collected by stress/test_campaign.py and
run by ``spfshm fuzz`` under pytest-xdist."""
import os

import pytest

from .campaign import ROTATION, run_one, seeds_of

SEEDS = seeds_of(os.environ.get("SPFSHM_SEEDS", ROTATION),
                 os.environ.get("SPFSHM_SHARD", "0/1"))


@pytest.mark.parametrize("seed", SEEDS)
def test_campaign_seed(seed):
    r = run_one(seed, int(os.environ.get("SPFSHM_OPS", "1500")),
                os.environ.get("SPFSHM_RESULTS"), os.environ.get("SPFSHM_SCHED", ""))
    assert r["exit_code"] == 0, "seed %d: %s %s\n  re-run: %s" % (
        seed, r["signature"], r["errors"], r["repro"])
