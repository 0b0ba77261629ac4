"""The controlled scheduler's run side: the --sched spec, the shared area, the tokens.

The engine itself is native (native/spf_sched.h: one CPU runs between scheduling
points, the points are the primitives' hooks).  Here: parsing ``--sched``
(``random[:PER_MILLION]``, ``pct[:DEPTH[:K]]``, or the ``list`` or
``guided[:CPU:STEP]`` or ``guided:CPU:eEVENTS`` a token carries: a recorded order, then
one placed preemption, or ``guided:CPU:[e]STEP:PARTNER:eEVENTS``, two; or
``guided:rPER_MILLION[:FROM]``: the recorded operation starts as an order, the
operations overlapping at random from the FROM-th on), the arena region, what a CPU
does to join and leave, what the runner reads afterwards (steps, switches, the digest),
and the replay token.

A token is ``spfshm1-`` and the base64url of a zlib'd JSON object: the model's version
digest, the run's configuration (``Config.to_dict``), the schedule (a policy and its
seed, or a switch list), and the digest of the run it came from.  Replaying a token
runs the same configuration under the same schedule; the digest says whether the run
was the same one.
"""
import base64
import functools
import hashlib
import json
import os
import zlib

import numpy as np

from .. import __version__, native
from ..mm.mm_types import STAT
from .replay import signature_of

TOKEN_PREFIX = "spfshm1-"
LOG_CAP = 1 << 17              # switches a run logs (a longer log is truncated)
POLICIES = {"random": native.lib.SPF_SCHED_RANDOM, "pct": native.lib.SPF_SCHED_PCT,
            "list": native.lib.SPF_SCHED_LIST, "guided": native.lib.SPF_SCHED_GUIDED}
GUIDE_EVENTS = (native.EV_IPI_SEND, native.EV_IPI_HANDLE, native.lib.SPF_EV_TABLE_ALLOC,
                native.lib.SPF_EV_TABLE_UNLINK, native.lib.SPF_EV_TABLE_FREE)
RANDOM_DEFAULT_PM = 20000      # random: a switch at 2% of the points
PCT_DEFAULT_DEPTH = 3
POINTS_PER_OP = 35             # PCT's k when not given: a mixed op's points, measured
DEFAULT_OPS = 40               # per CPU under --sched when --ops is not given
CPU_BITS = native.lib.SPF_SCHED_CPU_BITS


class TokenError(ValueError):
    """A token that cannot be replayed here (exit 2, one line)."""


def parse_spec(spec):
    """(policy, param, k) of a --sched spec; ValueError naming what is wrong."""
    parts = spec.split(":")
    name, args = parts[0], parts[1:]
    if name not in ("random", "pct", "list", "guided"):
        raise ValueError("--sched must be random[:PER_MILLION], pct[:DEPTH[:K]] or "
                         "replay:TOKEN, got %r" % spec)
    if name == "guided" and 1 <= len(args) <= 2 and args[0][:1] == "r":
        try:                           # guided:rPER_MILLION[:FROM]: the operations overlap
            pm, first = int(args[0][1:]), int(args[1]) if len(args) == 2 else 0
        except ValueError:
            pm = first = -1
        if not 0 < pm <= 1000000 or first < 0:
            raise ValueError("guided:rPER_MILLION[:FROM]: PER_MILLION in 1..1000000, "
                             "FROM >= 0, got %r" % ":".join(args))
        return name, 3, first << 20 | pm
    placed_at = 1                      # guided:CPU:STEP counts points, guided:CPU:eN events
    if name == "guided" and len(args) == 2 and args[1][:1] == "e":
        placed_at, args = 2, [args[0], args[1][1:]]
    if name == "guided" and len(args) == 4 and args[3][:1] == "e":
        at_event = args[1][:1] == "e"   # guided:CPU:[e]STEP:PARTNER:eEVENTS
        placed_at, args = 4 + at_event, [args[0], args[1][at_event:], args[2], args[3][1:]]
    try:
        nums = [int(a) for a in args]
    except ValueError:
        raise ValueError("--sched %s: %r is not an integer" % (name, ":".join(args)))
    if name == "random":
        if len(nums) > 1 or (nums and not 0 < nums[0] <= 1000000):
            raise ValueError("--sched random[:PER_MILLION]: PER_MILLION in 1..1000000")
        return name, nums[0] if nums else RANDOM_DEFAULT_PM, 0
    if name == "pct":
        if len(nums) > 2 or (nums and not 1 <= nums[0] <= native.lib.SPF_SCHED_MAX_DEPTH) \
                or (len(nums) == 2 and nums[1] < 1):
            raise ValueError("--sched pct[:DEPTH[:K]]: DEPTH in 1..%d, K >= 1"
                             % native.lib.SPF_SCHED_MAX_DEPTH)
        return name, nums[0] if nums else PCT_DEFAULT_DEPTH, nums[1] if len(nums) > 1 else 0
    if name == "guided" and placed_at >= 4:     # ... then two
        cpu, step, partner, events = nums
        if not (0 <= cpu < 256 and 0 <= partner < 256 and cpu != partner and step >= 1
                and 1 <= events < 1 << 16):
            raise ValueError("guided:CPU:[e]STEP:PARTNER:eEVENTS: CPU and PARTNER in "
                             "0..255 and not equal, STEP >= 1, EVENTS in 1..65535")
        return name, placed_at, step << 32 | events << 16 | partner << 8 | cpu
    if name == "guided" and args:      # a recorded prefix, then one placed preemption
        if len(nums) != 2 or not 0 <= nums[0] < 256 or nums[1] < 1:
            raise ValueError("guided:CPU:STEP or guided:CPU:eEVENTS: CPU in 0..255, "
                             "STEP or EVENTS >= 1")
        return name, placed_at, nums[1] << 8 | nums[0]
    if args:
        raise ValueError("--sched %s takes no argument (a token carries its list)" % name)
    return name, 0, 0


def pct_k(cfg):
    """PCT's k: the run's expected steps (given, or estimated from the ops)."""
    _, _, k = parse_spec(cfg.sched)
    return k or max(1, cfg.ops * cfg.cpus * POINTS_PER_OP)


def pct_bound(n, k, depth):
    """PCT's guarantee: a bug of depth d is found with probability >= 1/(n k^(d-1))."""
    return 1.0 / (n * float(k) ** (depth - 1))


def region(cfg):
    """The arena region of a --sched run (none for a parallel one)."""
    if not cfg.sched:
        return []
    size = native.lib.spf_sched_size(LOG_CAP, len(cfg.sched_list), cfg.sched_choices)
    return [("sched", np.uint64, (size + 7) // 8)]


def sched_ptr(arena):
    return native.ffi.cast("struct spf_sched *", arena.ptr("sched", "uint64_t"))


def init(arena, cfg):
    """In the parent, before the CPUs start."""
    name, param, k = parse_spec(cfg.sched)
    k = pct_k(cfg) if name == "pct" else k
    lst = native.ffi.new("uint64_t[]", list(cfg.sched_list) or [0])
    if native.lib.spf_sched_init(sched_ptr(arena), cfg.cpus, POLICIES[name],
                                 schedule_seed(cfg), param, k, LOG_CAP, lst,
                                 len(cfg.sched_list), cfg.sched_choices) != 0:
        raise ValueError("spf_sched_init refused --sched %s" % cfg.sched)


def schedule_seed(cfg):
    """The scheduler's seed: the run's, and sched_seed (0 by default) to vary the
    schedule of the same workload."""
    return int.from_bytes(hashlib.sha256(b"%d:%d" % (cfg.seed, cfg.sched_seed)).digest()[:8],
                          "little")


def enter(arena):
    """In a CPU (registered): wait for the first turn."""
    if native.lib.spf_sched_enter(sched_ptr(arena)) != 0:
        raise RuntimeError("spf_sched_enter: this process is not a registered CPU")


exit_ = native.lib.spf_sched_exit


class State:
    """What the parent reads of the scheduler (during and after the run)."""

    def __init__(self, arena, ncpus):
        self.s = sched_ptr(arena)
        self.arena, self.ncpus = arena, ncpus

    @property
    def step(self):
        return int(self.s.step)

    @property
    def deadlock(self):
        return bool(self.s.deadlock)

    def log(self):
        """Every switch as (step << CPU_BITS) | cpu, the first included; None when the
        log overflowed."""
        n = int(self.s.log_len)
        if n > LOG_CAP:
            return None
        buf = native.ffi.cast("uint64_t *", self.s + 1)
        return [int(buf[i]) for i in range(n)]

    def choices(self):
        """Exploration: per step from 0, (mask of the CPUs that could run, the CPU whose
        point it was or -1, the CPU that ran next or -1), as recorded (at most
        Config.sched_choices steps)."""
        n = min(int(self.s.choice_len), int(self.s.choice_cap))
        base = native.ffi.cast("uint64_t *", self.s + 1) + int(self.s.log_cap) \
            + int(self.s.list_len)
        out = []
        for i in range(n):
            w = int(base[2 * i + 1])
            nxt = w & 0xffffffff
            out.append((int(base[2 * i]), (w >> 32) - 1, -1 if nxt == 0xffffffff else nxt))
        return out

    def digest(self):
        """The run's digest: the schedule's (every point's step, CPU and class) and every
        CPU's event ring's, hashed together."""
        h = hashlib.sha256(b"%d" % int(self.s.digest))
        rings = self.arena["rings"]
        for c in range(self.ncpus):
            h.update(b":%d:%d" % (int(rings[c][0]), int(rings[c][2])))   # head, digest
        return h.hexdigest()[:16]

    def facts(self):
        s = self.s
        return {"steps": int(s.step), "switches": int(s.switches),
                "preemptions": int(s.preemptions), "timeouts": int(s.timeouts),
                "deadlock": bool(s.deadlock), "finished": bool(s.finished),
                "halted": bool(s.halted),
                "points": [int(s.points[c]) for c in range(self.ncpus)],
                "ops_begun": [int(s.ops_begun[c]) for c in range(self.ncpus)],
                "log_truncated": int(s.log_len) > LOG_CAP, "digest": self.digest()}


# -- tokens -------------------------------------------------------------------------------
_MODEL_FILES = ("mm", "run/runner.py", "run/workload.py", "run/scenario.py", "rcu.py", "smp.py",
                "arena.py")


@functools.lru_cache(maxsize=1)
def model_version():
    """__version__ and a digest of the model's protocol sources: a token made by other
    sources may schedule differently."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = hashlib.sha256(__version__.encode())
    for rel in _MODEL_FILES:
        p = os.path.join(root, rel)
        files = sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".py")) \
            if os.path.isdir(p) else [p]
        for f in files:
            with open(f, "rb") as fh:
                h.update(fh.read())
    return "%s+%s" % (__version__, h.hexdigest()[:10])


def make_token(cfg, digest, signature=None, version=None):
    d = {"v": version or model_version(), "cfg": _token_cfg(cfg), "digest": digest,
         "sig": signature}
    raw = zlib.compress(json.dumps(d, separators=(",", ":"), sort_keys=True).encode(), 9)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _token_cfg(cfg):
    """The settings that differ from the defaults (the rest are the defaults of the same
    model version), without where and how the run is watched."""
    from ..config import Config
    d, default = cfg.to_dict(), Config().to_dict()
    for k in ("artifacts", "pin", "sched_choices"):
        d.pop(k, None)
    d = {k: v for k, v in d.items() if v != default[k]}
    d["sched_deltas"] = _deltas(d.pop("sched_list", ()))
    return d


def _deltas(lst):
    out, prev = [], 0
    for e in lst:
        step = e >> CPU_BITS
        out += [step - prev, e & ((1 << CPU_BITS) - 1)]
        prev = step
    return out


def _undeltas(flat):
    out, step = [], 0
    for i in range(0, len(flat), 2):
        step += flat[i]
        out.append(step << CPU_BITS | flat[i + 1])
    return tuple(out)


def read_token(token):
    """(config dict, digest, signature) of a token; TokenError naming the problem."""
    if not token.startswith(TOKEN_PREFIX):
        raise TokenError("not a spfshm token (it must start with %r)" % TOKEN_PREFIX)
    body = token[len(TOKEN_PREFIX):].strip()
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        d = json.loads(zlib.decompress(raw))
        cfg, digest, version, sig = d["cfg"], d["digest"], d["v"], d.get("sig")
        deltas = cfg.pop("sched_deltas")
        if not isinstance(deltas, list) or len(deltas) % 2 or \
                not all(isinstance(x, int) and x >= 0 for x in deltas):
            raise ValueError("bad switch list")
        cfg["sched_list"] = _undeltas(deltas)
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        raise TokenError("the token does not parse (%s: %s): copied whole?"
                         % (type(e).__name__, e))
    mine = model_version()
    if version != mine:
        raise TokenError("the token was made by model version %s; this is %s (its "
                         "schedule would not replay here)" % (version, mine))
    return cfg, digest, sig


# -- the runner's side --------------------------------------------------------------------
class Monitor:
    """The stall check under the scheduler: one CPU runs at a time (a CPU that waits its
    turn for long is not stuck), so it is the schedule that must move.  A deadlock (no
    CPU can run, none has a deadline) is reported at once, naming the blocked CPUs."""

    def __init__(self, arena, cfg):
        self.state = State(arena, cfg.cpus)
        self.timeout = cfg.stall_timeout
        self.last, self.since = -1, 0.0
        self.why = None

    def halted(self):
        """The schedule halted (spf_sched_halt_after, after a violation)."""
        return bool(self.state.s.halted)

    def stuck(self, now, running):
        s = self.state.s
        if s.deadlock:
            blocked = [c for c in running if s.state[c] == native.lib.SPF_SCHED_BLOCKED]
            self.why = ("deadlock under the scheduler at step %d: no CPU can run (blocked: "
                        "CPU %s)" % (int(s.step), ",".join(map(str, blocked)) or "-"))
            return blocked or list(running)
        step = int(s.step)
        if step != self.last:
            self.last, self.since = step, now
        elif now - self.since > self.timeout:
            turn = int(s.turn)
            return [turn] if turn in running else list(running)
        return []

    def reset(self, now):
        self.since = now


def add_to_report(rep, arena, cfg):
    """The schedule's facts, the token, and the token as the re-run command."""
    state = State(arena, cfg.cpus)
    facts = state.facts()
    if cfg.sched_choices:
        facts["choices"] = state.choices()
    name, param, _ = parse_spec(cfg.sched)
    if name == "pct":
        facts["pct_bound"] = pct_bound(cfg.cpus, pct_k(cfg), param)
    ops = arena["stats"][:cfg.cpus, STAT["ops"]]
    facts["ops_per_cpu"] = [int(x) for x in ops]
    facts["log"] = state.log()
    facts["token"] = make_token(cfg, facts["digest"], signature_of(rep))
    rep["sched"] = facts
    rep["repro"] = "spfshm replay --token %s" % facts["token"]


def summary_line(rep):
    s = rep["sched"]
    line = ("schedule %s: %d steps, %d switches (%d preemptions), %d timeouts; digest %s"
            % (rep["config"]["sched"], s["steps"], s["switches"], s["preemptions"],
               s["timeouts"], s["digest"]))
    if "pct_bound" in s:
        line += "; PCT finds a depth-%s bug with probability >= %.3g per run" % (
            rep["config"]["sched"].split(":")[1] if ":" in rep["config"]["sched"]
            else PCT_DEFAULT_DEPTH, s["pct_bound"])
    return line
