"""The op mix's contention: hot spots that CPUs actually share."""
import types

from spfshm.run.workload import CONTENTION, Workload, contention


def geometry(ncpus):
    base = 0x400000000
    return types.SimpleNamespace(ncpus=ncpus, window_base=base, window_pages=4096,
                                 window_end=base + 4096 * 4096)


def test_seeds_0_to_4_meet_every_level_on_a_many_core_run():
    assert {contention(s, 16) for s in range(5)} == set(CONTENTION)


def test_every_spot_has_cpus_to_contend_on_it():
    """At most one spot per 4 CPUs: with 2 CPUs both start on the one spot at every
    level (the levels then differ in how far the CPUs stray)."""
    for seed in range(12):
        assert contention(seed, 2)[0] == 1
        g = geometry(2)
        assert Workload(g, seed, 0).hot == Workload(g, seed, 1).hot
        spots, _ = contention(seed, 8)
        g = geometry(8)
        starts = [Workload(g, seed, cpu).hot for cpu in range(8)]
        assert all(starts.count(va) >= 2 for va in starts) and len(set(starts)) == spots
    assert {contention(s, 2)[1] for s in range(5)} == {r for _, r in CONTENTION}


def test_every_run_meets_every_radius():
    """The seed sets where the radius starts; a CPU that wanders draws it anew, so each
    CPU's pages come at every level's radius within a run (the busted twin, a radius
    fixed for the run, stays at the seed's)."""
    g = geometry(2)
    for seed in range(5):
        w = Workload(g, seed, 0)
        assert w.radius == contention(seed, 2)[1]
        seen = set()
        for _ in range(2000):
            w._page()
            seen.add(w.radius)
        assert seen == {r for _, r in CONTENTION}
