"""Page-table removal under lockless walkers: reclaim (both plans), the IPI-less TLB
flush, and the configurations the kernel forbids (in the bug catalogue: they must be
caught like any busted variant)."""
import subprocess
import sys

import pytest

from spfshm.config import Config, ConfigError
from spfshm.run.runner import run_stress


@pytest.mark.parametrize("reclaim,table_free,reclaimer,mode", [
    ("seed", "ipi", False, "classic"), ("seed", "rcu", True, "spf"),
    ("seed", "ipi", True, "pervma"), ("ptreclaim", "rcu", False, "spf,pervma,classic"),
])
def test_reclaim_runs_clean_and_reclaims(reclaim, table_free, reclaimer, mode):
    rep = run_stress(Config(cpus=3, ops=3000, seed=31, reclaim=reclaim, table_free=table_free,
                            reclaimer=reclaimer, fault_mode=mode, delay=0.01, check_every=0.3,
                            workload="faults" if reclaim == "ptreclaim" else "mixed").resolved())
    assert rep["violations"] == [] and rep["errors"] == [] and rep["exit_code"] == 0
    assert rep["tables"]["reclaimed"] > 0, rep["tables"]


@pytest.mark.parametrize("table_free", ["ipi", "rcu"])
def test_no_ipi_flush_with_the_right_pairing_is_clean(table_free):
    """Remote invalidation is safe for the hardware walk (it waits for instructions in
    flight) and, with RCU table freeing, for IRQs-off and RCU walkers alike.  With IPI
    table freeing only the hardware walk is: no speculative faults, and no gup_fast (an
    IRQs-off walker too: the faults workload has none)."""
    mode = "classic" if table_free == "ipi" else "spf,pervma"
    workload = "faults" if table_free == "ipi" else "mixed"
    rep = run_stress(Config(cpus=3, ops=3000, seed=32, tlb_flush="no-ipi", table_free=table_free,
                            fault_mode=mode, workload=workload, delay=0.01,
                            check_every=0.3).resolved())
    assert rep["violations"] == [] and rep["errors"] == [] and rep["exit_code"] == 0
    assert rep["tables"]["freed"] > 0


def test_ptreclaim_requires_rcu_table_free():
    with pytest.raises(ConfigError, match="table-free rcu"):
        Config(cpus=2, reclaim="ptreclaim", table_free="ipi").resolved()
    r = subprocess.run([sys.executable, "-m", "spfshm", "stress", "--reclaim", "ptreclaim",
                        "--table-free", "ipi"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--table-free rcu" in r.stderr


def test_default_mixed_workload_reaches_reclaim_and_collapse():
    """#14 item 14: with reclaim and collapse on (the defaults), the mixed workload maps
    and zaps whole 2 MiB blocks often enough that PT_RECLAIM and khugepaged fire (with
    the op mix of partial ranges only, this run reclaimed no table at all)."""
    rep = run_stress(Config(cpus=3, ops=3000, seed=33, check_every=0.5).resolved())
    assert rep["exit_code"] == 0, rep["violations"]
    assert rep["tables"]["reclaimed"] >= 3, rep["tables"]
    assert rep["thp"]["collapsed"] >= 3, rep["thp"]
