"""``spfshm explore SCENARIO --preemptions K``: every schedule of a litmus scenario with at
most K preemptions, under the controlled scheduler's LIST policy.

Iterative context bounding (CHESS: Musuvathi and Qadeer, "Iterative context bounding
for systematic testing of multithreaded programs", PLDI 2007).  A schedule is its switch
list (native/spf_sched.h: the entry (step << 16) | cpu switches to cpu at step if it
can run).  The empty list is the schedule without a preemption: the running CPU goes on
until it blocks or ends, then the next runnable CPU in id order.  A run records, per
step, who could run, whose point it was and who ran next (Config.sched_choices); its
children are the schedules that follow it up to a step after its list's last entry and
there switch to another CPU:
  - the CPU whose point it was could go on: every other runnable CPU is a preemption (+1);
  - it could not (it blocked or ended, or the start): every runnable CPU but the one that
    ran is a free choice (+0).
A child's run is new from its last entry on, so no schedule runs twice.  The schedules
with b preemptions are all run (depth first) before any with b + 1 (iterative
deepening), up to K; the first run that fails stops the search, with its token.
With ``sample`` S, once level K is exhausted a seeded random sample of S schedules of
level K + 1 (drawn from all of them: the children the level-K runs found) runs too: a
look one preemption deeper at a fixed cost, which exhaustive search would pay for with
every schedule of that level.
"""
import dataclasses
import random
import sys
import time

from .pool import runs
from .replay import signature_of
from .sched import CPU_BITS

CHOICE_CAP = 1 << 15        # steps whose choices a run records (a longer run is cut short)


def children(lst, choices, preemptions, bound):
    """The (switch list, preemptions) of a run's children within the bound, in step
    order; and whether the choice log was cut short (the run went on past it)."""
    start = (lst[-1] >> CPU_BITS) + 1 if lst else 0
    out = []
    for step in range(start, len(choices)):
        mask, cur, nxt = choices[step]
        if cur >= 0 and mask >> cur & 1:
            cost, other = 1, cur
        else:
            cost, other = 0, nxt
        if preemptions + cost > bound:
            continue
        for c in range(mask.bit_length()):
            if mask >> c & 1 and c != other:
                out.append((lst + (step << CPU_BITS | c,), preemptions + cost))
    return out


def describe_list(lst):
    return ", ".join("step %d -> CPU %d" % (e >> CPU_BITS, e & ((1 << CPU_BITS) - 1))
                     for e in lst) or "none"


class Explorer:
    """Runs the schedules of ``cfg`` (a resolved scenario Config) up to ``bound``
    preemptions.  ``progress(explorer)`` is called after each run; ``run(cfg)`` runs one
    schedule (default: a pool of its own for the search, run/pool.py)."""

    def __init__(self, cfg, bound, max_schedules=0, progress=lambda e: None, run=None,
                 sample=0, sample_seed=0):
        self.cfg = dataclasses.replace(cfg, sched="list", sched_list=(),
                                       sched_choices=CHOICE_CAP)
        self.bound, self.max_schedules = bound, max_schedules
        self.sample, self.sample_seed = sample, sample_seed
        self.progress, self.run_given = progress, run
        self.runs = 0
        self.per_level = [0] * (bound + 2)
        self.sampled_of = 0          # the level-(bound + 1) schedules the sample drew from
        self.failure = None          # the first failing schedule
        self.stopped = False         # --max-schedules
        self.cut = 0                 # runs longer than the choice log (not branched past it)
        self.diverged = 0            # runs that did not switch where their list said
        self.interrupted = 0         # the exit code of an interrupted run (128 + signal)
        self.elapsed = 0.0

    def _run(self, lst, preemptions):
        rep = self.run_one(dataclasses.replace(self.cfg, sched_list=lst))
        self.runs += 1
        self.per_level[preemptions] += 1
        choices = rep["sched"]["choices"]
        if lst:
            step, cpu = lst[-1] >> CPU_BITS, lst[-1] & ((1 << CPU_BITS) - 1)
            if step >= len(choices) or choices[step][2] != cpu:
                self.diverged += 1
        self.cut += rep["sched"]["steps"] >= CHOICE_CAP
        if rep["interrupted"]:               # SIGINT/SIGTERM: stop, say what was done
            self.interrupted = rep["exit_code"]
        elif rep["exit_code"] != 0:
            self.failure = {"signature": signature_of(rep) or (rep["errors"] or ["?"])[0],
                            "exit_code": rep["exit_code"], "switch_list": list(lst),
                            "preemptions": preemptions, "schedule": self.runs,
                            "steps": rep["sched"]["steps"], "token": rep["sched"]["token"],
                            "repro": rep["repro"], "violations": rep["violations"][:3],
                            "errors": rep["errors"], "artifacts": rep.get("artifacts")}
        return choices

    def explore(self):
        with runs(self.run_given) as self.run_one:
            return self._explore()

    def _explore(self):
        t0 = time.monotonic()
        work = [[] for _ in range(self.bound + 2)]
        work[0].append(((), 0))
        deeper = self.bound + (1 if self.sample else 0)
        for level in range(self.bound + 1):
            stack = work[level][::-1]          # in the order found, depth first
            while stack and not (self.failure or self.interrupted):
                if self.max_schedules and self.runs >= self.max_schedules:
                    self.stopped = True
                    break
                lst, pre = stack.pop()
                choices = self._run(lst, pre)
                self.elapsed = time.monotonic() - t0
                self.progress(self)
                kids = children(lst, choices, pre, deeper)
                stack.extend(k for k in reversed(kids) if k[1] == pre)
                work[pre + 1].extend(k for k in kids if k[1] > pre)
            work[level] = None
            if self.failure or self.stopped or self.interrupted:
                break
        else:
            self._run_sample(work[self.bound + 1], t0)
        self.elapsed = time.monotonic() - t0
        return self

    def _run_sample(self, level, t0):
        """The seeded sample of the next level (none without ``sample``)."""
        self.sampled_of = len(level)
        if not self.sample:
            return
        pick = random.Random("spfshm-explore-sample:%d" % self.sample_seed).sample(
            level, min(self.sample, len(level)))
        for lst, pre in sorted(pick):      # in step order: neighbours share prefixes
            if self.failure or self.interrupted:
                break
            self._run(lst, pre)
            self.elapsed = time.monotonic() - t0
            self.progress(self)

    @property
    def exhaustive(self):
        return not (self.failure or self.stopped or self.cut or self.diverged
                    or self.interrupted)

    def verdict(self):
        """The summary line."""
        rate = "%.1f s, %.1f schedules/s" % (self.elapsed, self.runs / max(self.elapsed, 1e-9))
        k = "%d preemption%s" % (self.bound, "" if self.bound == 1 else "s")
        if self.failure:
            f = self.failure
            return ("VIOLATION %s in schedule %d (%d preemption%s; switches: %s), after %d "
                    "schedules in %s" % (f["signature"], f["schedule"], f["preemptions"],
                                         "" if f["preemptions"] == 1 else "s",
                                         describe_list(f["switch_list"]), self.runs, rate))
        why = []
        if self.stopped:
            why.append("stopped at --max-schedules %d" % self.max_schedules)
        if self.interrupted:
            why.append("interrupted")
        if self.cut:
            why.append("%d run(s) longer than %d steps were not branched past them"
                       % (self.cut, CHOICE_CAP))
        if self.diverged:
            why.append("%d run(s) did not replay their prefix: the model is not a function "
                       "of the schedule" % self.diverged)
        if why:
            return "%d schedules, no violation up to %s (not exhaustive: %s) in %s" % (
                self.runs, k, "; ".join(why), rate)
        more = " and %d sampled of the %d with %d" % (
            self.per_level[-1], self.sampled_of, self.bound + 1) if self.sample else ""
        return "%d schedules, no violation (exhaustive up to %s%s) in %s" % (
            self.runs, k, more, rate)

    def levels(self):
        return "; ".join("%d preemption%s: %d" % (b, "" if b == 1 else "s", n)
                         for b, n in enumerate(self.per_level) if n or b == 0)

    def to_dict(self):
        return {"config": self.cfg.to_dict(), "preemptions": self.bound,
                "max_schedules": self.max_schedules, "schedules": self.runs,
                "sample": self.sample, "sample_seed": self.sample_seed,
                "sampled_of": self.sampled_of,
                "per_preemptions": self.per_level, "exhaustive": self.exhaustive,
                "stopped": self.stopped, "cut": self.cut, "diverged": self.diverged,
                "elapsed_s": round(self.elapsed, 3),
                "schedules_per_s": round(self.runs / max(self.elapsed, 1e-9), 2),
                "failure": self.failure, "verdict": self.verdict()}


class Progress:
    """The schedules so far: one rewritten line on a terminal, a line every few seconds
    otherwise, nothing when quiet."""

    def __init__(self, quiet, stream=sys.stderr, every_s=5.0):
        self.quiet, self.stream = quiet, stream
        self.tty = stream.isatty()
        self.every = 0.5 if self.tty else every_s
        self.next = every_s if not self.tty else 0.0
        self.shown = False

    def __call__(self, ex):
        if self.quiet or ex.elapsed < self.next:
            return
        self.next = ex.elapsed + self.every
        line = "[%6.1fs] %d schedules (%.1f/s); by preemptions: %s" % (
            ex.elapsed, ex.runs, ex.runs / max(ex.elapsed, 1e-9), ex.levels())
        self.stream.write("\r" + line + "\x1b[K" if self.tty else line + "\n")
        self.stream.flush()
        self.shown = True

    def done(self):
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
