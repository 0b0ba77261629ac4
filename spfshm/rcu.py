"""call_rcu-style deferred work on top of the native epoch RCU.

Follows the contract of Linux's call_rcu and rcu_barrier (kernel/rcu/tree.c: a callback
runs after a grace period that began after it was queued), not their implementation;
no kernel version.

Each CPU keeps its own queue (no shared structure on the hot path).  ``call_rcu(fn, *args)``
stamps the callback with a grace-period cookie; ``rcu_process_callbacks()`` runs every
callback whose grace period has elapsed, oldest first.  The queue is bounded: past
``limit`` callbacks the caller waits for a full grace period and drains (the kernel
throttles callback floods the same way), so the backlog never grows without bound.
"""
from collections import deque

from . import native


class CallRcu:
    __slots__ = ("queue", "limit", "busted", "stall_timeout_s", "invoked", "max_backlog",
                 "forced", "on_elapsed", "lat_sum_ns", "lat_max_ns")

    def __init__(self, limit=4096, busted=False, stall_timeout_s=10.0, on_elapsed=None):
        """``on_elapsed(cookie)`` is told of each grace period seen to elapse."""
        if limit <= 0:
            raise ValueError("call_rcu queue limit must be positive, got %d" % limit)
        self.queue = deque()
        self.limit = limit
        self.busted = busted
        self.stall_timeout_s = stall_timeout_s
        self.invoked = 0
        self.max_backlog = 0
        self.forced = 0
        self.on_elapsed = on_elapsed
        self.lat_sum_ns = self.lat_max_ns = 0     # call_rcu -> invocation, over `invoked`

    def call_rcu(self, fn, *args):
        """Run fn(*args) after a grace period (no reader that may see the object remains)."""
        if len(self.queue) >= self.limit:
            self.forced += 1
            self.rcu_barrier()
        self.queue.append((native.rcu_start_gp(), native.now_ns(), fn, args))
        if len(self.queue) > self.max_backlog:
            self.max_backlog = len(self.queue)

    def rcu_process_callbacks(self):
        """Invoke every callback whose grace period has elapsed; returns how many ran."""
        n = 0
        q = self.queue
        last = 0
        now = None
        while q:
            cookie, t, fn, args = q[0]
            if not self.busted and native.rcu_gp_blocker(cookie) >= 0:
                break
            q.popleft()
            if cookie != last and self.on_elapsed:
                self.on_elapsed(cookie)
                last = cookie
            now = now or native.now_ns()
            self.lat_sum_ns += now - t
            self.lat_max_ns = max(self.lat_max_ns, now - t)
            fn(*args)
            n += 1
        self.invoked += n
        return n

    def rcu_barrier(self):
        """Wait for a grace period covering every queued callback, then run them all."""
        if self.queue:
            native.synchronize_rcu(self.stall_timeout_s, busted=self.busted)
            self.rcu_process_callbacks()

    def backlog(self):
        return len(self.queue)
