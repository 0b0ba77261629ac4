"""Generic perturbation (--perturb): profiles from the seed, the native decision stream,
the hook in every primitive class, and what a run reports."""
import dataclasses
import shlex
import subprocess
import sys

import pytest

from spfshm import native
from spfshm.cli import build_parser, config_from_args
from spfshm.config import PERTURB_PROFILES, Config, ConfigError
from spfshm.mm.perturb import RANGES, arm_generic, generic_profile, no_walk_point, perturb_line
from spfshm.run.report import summary
from spfshm.run.runner import run_stress

ffi, lib = native.ffi, native.lib
PH_WORDS = native.PERTURB_WORDS
CLS = {c: i for i, c in enumerate(native.PERTURB_CLASSES)}


# -- profiles -----------------------------------------------------------------------------
def test_the_profile_table_covers_exactly_the_names_config_accepts():
    assert set(RANGES) == set(PERTURB_PROFILES)


@pytest.mark.parametrize("first", [0, 5, 22])
def test_auto_picks_the_profile_from_the_seed_and_covers_them_all(first):
    names = [generic_profile(Config(cpus=2, seed=s))["profile"] for s in range(first, first + 4)]
    assert sorted(names) == sorted(PERTURB_PROFILES)
    assert names == [generic_profile(Config(cpus=2, seed=s))["profile"]
                     for s in range(first, first + 4)]


@pytest.mark.parametrize("name", PERTURB_PROFILES)
def test_a_profile_is_resolved_from_the_seed_within_its_ranges(name):
    profs = [generic_profile(Config(cpus=4, seed=s, perturb=name)) for s in range(20)]
    assert profs[3] == generic_profile(Config(cpus=4, seed=3, perturb=name))
    assert all(p["profile"] == name for p in profs)
    r = RANGES[name]
    assert len({p["per_million"] for p in profs}) > 10          # the seed moves the values
    for p in profs:
        assert r["per_million"][0] <= p["per_million"] <= r["per_million"][1]
        assert (p["spin_pm"], p["yield_pm"], p["sleep_pm"]) == r["shares"]
        s = p["slow"]                                         # every profile has one
        assert 0 <= s["key"] < 2**64 and 0 < s["window_ms"] < s["period_ms"]
    assert len({p["slow"]["key"] for p in profs}) == len(profs)


def test_off_resolves_to_nothing_and_unknown_is_a_config_error():
    assert generic_profile(Config(cpus=2, perturb="off")) is None
    with pytest.raises(ConfigError, match="--perturb"):
        Config(cpus=2, perturb="nope").validate()


def test_repro_and_dict_round_trip():
    for value in ("off", "kcsan", "auto"):
        cfg = Config(cpus=2, seed=9, perturb=value)
        assert ("--perturb" in cfg.repro()) == (value != Config.perturb)
        args = build_parser().parse_args(shlex.split(cfg.repro())[1:])
        assert config_from_args(args).perturb == value
        assert Config.from_dict(cfg.to_dict()) == cfg


def test_cli_rejects_an_unknown_profile_with_one_line():
    r = subprocess.run([sys.executable, "-m", "spfshm", "stress", "--perturb", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--perturb" in lines[0] and "nope" in lines[0], r.stderr
    assert r.stdout == ""


# -- the native stream --------------------------------------------------------------------
PROFILE = {"per_million": 100000, "spin_pm": 500, "yield_pm": 300, "spin_max": 64,
           "sleep_max_ns": 2000, "read_factor": 3, "read_sleep_ns": 5000}
ALWAYS = dict(PROFILE, per_million=1000000, spin_pm=1000, yield_pm=0, spin_max=2)


@pytest.fixture
def arm():
    """arm(profile, seed, cpu) -> the hits row; disarmed at the end."""
    rows = []

    def do(profile, seed=1, cpu=0):
        rows.append(ffi.new("uint64_t[]", PH_WORDS))
        native.perturb_arm(profile, seed, cpu, rows[-1])
        return rows[-1]

    yield do
    native.perturb_disarm()


def draws(n, now=0):
    return [native.perturb_draw(now) for _ in range(n)]


def test_the_stream_is_fixed_by_seed_and_cpu(arm):
    arm(PROFILE, seed=7, cpu=1)
    a = draws(4000)
    arm(PROFILE, seed=7, cpu=1)
    assert draws(4000) == a
    arm(PROFILE, seed=7, cpu=2)
    assert draws(4000) != a
    arm(PROFILE, seed=8, cpu=1)
    assert draws(4000) != a
    dec = [native.perturb_decision(d) for d in a]
    paused = [d for d in dec if d[0]]
    assert 300 <= len(paused) <= 500                          # p = 10% of 4000
    kinds = {k: sum(1 for d in paused if d[0] == k) for k in native.PERTURB_KINDS}
    assert kinds["spin"] > kinds["yield"] > kinds["sleep"] > 0  # shares 50/30/20%
    assert all(1 <= n <= 64 for k, n, _ in paused if k == "spin")
    assert all(1 <= n <= 2000 for k, n, _ in paused if k == "sleep")
    assert not any(slow for _, _, slow in paused)


def test_the_slow_cpu_is_starved_inside_its_window_only(arm):
    ms = 1000000
    slow = dict(PROFILE, slow=1, slow_cpus=1, slow_key=5, slow_factor=10,
                slow_period_ns=100 * ms, slow_window_ns=10 * ms, slow_phase_ns=30 * ms,
                slow_sleep_ns=500000)
    arm(slow)
    inside = [native.perturb_decision(d) for d in draws(500, now=5 * 100 * ms + 75 * ms)]
    assert all(k == "sleep" and 1 <= n <= 500000 and s for k, n, s in inside)  # 10% x 10
    outside = [native.perturb_decision(d) for d in draws(2000, now=5 * 100 * ms + 10 * ms)]
    assert 0 < sum(1 for k, _, _ in outside if k) < 400
    assert not any(s for _, _, s in outside)
    arm(dict(slow, slow=0))                                   # no slow cycle: no window
    assert not any(native.perturb_decision(d)[2] for d in draws(500, now=575 * ms))


def test_the_slow_cpu_changes_from_period_to_period_and_is_one_at_a_time(arm):
    """Every CPU takes turns, so the slow side of a race is sometimes the reader and
    sometimes the writer; in each period's window exactly one CPU is slow."""
    ms, ncpus = 1000000, 3
    slow = dict(PROFILE, slow=1, slow_cpus=ncpus, slow_key=0xfeed, slow_factor=10,
                slow_period_ns=100 * ms, slow_window_ns=10 * ms, slow_phase_ns=30 * ms,
                slow_sleep_ns=500000)
    windows = [p * 100 * ms + 75 * ms for p in range(60)]     # one inside each period's
    slow_in = [[] for _ in windows]
    for cpu in range(ncpus):
        arm(slow, cpu=cpu)
        for i, now in enumerate(windows):
            if native.perturb_decision(draws(1, now=now)[0])[2]:
                slow_in[i].append(cpu)
    assert all(len(cpus) == 1 for cpus in slow_in)            # 10% x 10: always a pause
    turns = [cpus[0] for cpus in slow_in]
    assert all(turns.count(cpu) >= 5 for cpu in range(ncpus))
    arm(slow, cpu=0)
    again = [native.perturb_decision(draws(1, now=p * 100 * ms + 75 * ms)[0])[2]
             for p in range(60)]
    assert again == [t == 0 for t in turns]                   # fixed by the key


def test_an_inconsistent_profile_is_refused():
    with pytest.raises(ValueError, match="inconsistent"):
        native.perturb_arm(dict(PROFILE, sleep_max_ns=0), 1, 0,
                           ffi.new("uint64_t[]", PH_WORDS))
    with pytest.raises(ValueError, match="inconsistent"):
        native.perturb_arm(dict(PROFILE, slow=1, slow_factor=2), 1, 0,
                           ffi.new("uint64_t[]", PH_WORDS))
    ms = 1000000
    whole = dict(PROFILE, slow=1, slow_cpus=2, slow_factor=2, slow_period_ns=100 * ms,
                 slow_window_ns=10 * ms, slow_sleep_ns=1000)
    native.perturb_arm(whole, 1, 1, ffi.new("uint64_t[]", PH_WORDS))
    with pytest.raises(ValueError, match="inconsistent"):     # a CPU not among them
        native.perturb_arm(whole, 1, 2, ffi.new("uint64_t[]", PH_WORDS))
    native.perturb_disarm()


def test_the_hook_takes_the_decisions_of_the_stream(arm):
    arm(PROFILE, seed=3)
    expected = [native.perturb_decision(d)[0] for d in draws(3000)]
    hits = arm(PROFILE, seed=3)
    word = ffi.new("uint64_t *")
    for _ in range(3000):
        native.fetch_add(word, 1)
    assert hits[CLS["atomic"]] == sum(1 for k in expected if k) > 0
    for i, k in enumerate(native.PERTURB_KINDS):
        assert hits[native.PH_KIND + i] == expected.count(k)
    native.perturb_disarm()
    native.fetch_add(word, 1)
    assert hits[CLS["atomic"]] == sum(1 for k in expected if k)


def _lock():
    lk = ffi.new("uint32_t *")
    native.spin_lock(lk, 0)
    native.spin_unlock(lk)


def _seq():
    s = ffi.new("uint64_t *")
    native.seq_read_retry(s, native.seq_try_begin(s))


def _seq_write():
    s = ffi.new("uint64_t *")
    native.seq_write_begin(s)
    native.seq_write_end(s)


def _rcu():
    native.rcu_read_lock()
    native.rcu_read_unlock()


def _irq():
    native.local_irq_disable()
    native.local_irq_enable()


@pytest.mark.parametrize("cls,call,n", [
    ("lock", _lock, 4), ("atomic", lambda: native.load_acquire(ffi.new("uint64_t *")), 1),
    ("atomic", lambda: native.store_release(ffi.new("uint64_t *"), 1), 2),
    ("seq", _seq, 2), ("seq", _seq_write, 3), ("rcu", _rcu, 2), ("irq", _irq, 2), ("walk", native.perturb_walk, 1),
])
def test_each_primitive_pauses_in_its_class(arm, cls, call, n):
    """... with the profile's pause kind (spins here), except a walk's shared read, which
    always sleeps (long enough for another CPU's whole operation).  A release pauses on
    both sides: the lock's four are before the acquire, inside, before and after the
    release; a release store's and a seqcount write end's, before and after."""
    hits = arm(ALWAYS)
    call()
    assert [hits[i] for i in range(len(CLS))] == [n if c == cls else 0 for c in CLS]
    kind = native.PERTURB_KINDS.index("sleep" if cls == "walk" else "spin")
    assert hits[native.PH_KIND + kind] == n and hits[native.PH_HANDLER] == 0


def test_registering_and_unregistering_a_cpu_disarm(arm, make_smp):
    arena, smp = make_smp(1)
    word = ffi.new("uint64_t *")
    hits = arm(ALWAYS)
    smp.become_cpu(0)                  # a forked worker's inherited arming is not its own
    try:
        native.fetch_add(word, 1)
        assert hits[CLS["atomic"]] == 0
        hits = arm(ALWAYS, cpu=0)
        native.fetch_add(word, 1)
        assert hits[CLS["atomic"]] == 1
    finally:
        native.cpu_unregister()
    native.fetch_add(word, 1)
    assert hits[CLS["atomic"]] == 1


def test_only_the_registered_cpu_is_armed(make_smp):
    arena, smp = make_smp(3)
    hits = ffi.new("uint64_t[]", PH_WORDS)
    cfg = Config(cpus=2, seed=1, perturb="kcsan")
    smp.become_cpu(2)                  # the parent's row (as the runner's parent is)
    try:
        assert arm_generic(cfg, 2, 2, hits) is no_walk_point
    finally:
        native.cpu_unregister()
    smp.become_cpu(0)
    try:
        assert arm_generic(cfg, 1, 2, hits) is no_walk_point          # only arena rows here
        assert arm_generic(dataclasses.replace(cfg, perturb="off"), 0, 2, hits) \
            is no_walk_point
        assert arm_generic(cfg, 0, 2, hits) is native.perturb_walk
        for _ in range(1000):                                         # p = 3.6%
            native.perturb_walk()
        assert 0 < hits[CLS["walk"]] == sum(hits[i] for i in range(len(CLS)))
    finally:
        native.cpu_unregister()


# -- runs ---------------------------------------------------------------------------------
RUN = Config(cpus=2, ops=1500, seed=1, fault_mode="spf,pervma,classic", table_free="rcu")


def test_off_takes_no_pause():
    rep = run_stress(dataclasses.replace(RUN, ops=400, perturb="off"))
    assert rep["exit_code"] == 0 and rep["violations"] == [] and rep["errors"] == []
    p = rep["perturb"]
    assert p["profile"] == "off" and p["params"] is None and p["pauses"] == 0
    assert not any(p["by_class"].values()) and not any(p["by_kind"].values())
    assert "perturbation: generic off" in summary(rep)


def test_a_generic_profile_pauses_in_every_class_and_stays_clean():
    cfg = dataclasses.replace(RUN, perturb="kcsan")
    rep = run_stress(cfg)
    assert rep["exit_code"] == 0 and rep["violations"] == [] and rep["errors"] == []
    p = rep["perturb"]
    assert p["params"] == generic_profile(cfg) and p["profile"] == "kcsan"
    assert all(n > 0 for n in p["by_class"].values()), p["by_class"]
    assert p["in_ipi_handler"] > 0
    assert p["pauses"] == sum(p["by_class"].values()) == sum(p["by_kind"].values())
    assert p["pauses"] == sum(sum(c.values()) for c in p["per_cpu"])
    assert all(sum(c.values()) > 0 for c in p["per_cpu"])
    assert perturb_line(p) in summary(rep)
    assert "walk %d" % p["by_class"]["walk"] in perturb_line(p)


def test_the_slow_cpu_is_slowed():
    cfg = dataclasses.replace(RUN, seed=3, perturb="mixed")
    rep = run_stress(cfg)
    assert rep["exit_code"] == 0 and rep["violations"] == [] and rep["errors"] == []
    p = rep["perturb"]
    assert p["params"]["slow"] is not None and p["in_slow_window"] > 0
    assert p["by_kind"]["sleep"] >= p["in_slow_window"]
    assert "a slow CPU, another each period" in summary(rep)
