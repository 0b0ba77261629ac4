"""Shrinking a failing input: delta debugging over a list (Zeller and Hildebrandt's ddmin,
"Simplifying and Isolating Failure-Inducing Input", TSE 2002), then simpler versions of
single items and of the whole list, then one-item removal until the result is 1-minimal
(removing any single item makes it pass).

``Shrinker(fails)`` wraps a predicate on lists (True: the list still fails the way that
matters); it remembers every answer, so a list is run once however often the phases ask,
and counts the runs.  The result is deterministic given the predicate: the clock only
decides when a progress line is printed.
"""
import time


class Shrinker:
    def __init__(self, fails, key=repr, progress=None, every=3.0, unit="items"):
        """fails(list) -> bool; key(list) -> a hashable name of the list (for the memo);
        progress(line) is called at most once per ``every`` seconds while shrinking."""
        self.fails, self.key, self.unit = fails, key, unit
        self.progress, self.every = progress, every
        self.memo = {}
        self.runs = 0
        self.best = None
        self.phase = "ddmin"
        self.t0 = self.last = time.monotonic()

    def test(self, items):
        k = self.key(items)
        if k not in self.memo:
            self.runs += 1
            self.memo[k] = bool(self.fails(items))
            if self.memo[k] and (self.best is None or len(items) < len(self.best)):
                self.best = list(items)
            now = time.monotonic()
            if self.progress and now - self.last >= self.every:
                self.last = now
                self.progress("shrinking (%s): %d runs, %.0f s, %s %s left"
                              % (self.phase, self.runs, now - self.t0,
                                 len(self.best) if self.best is not None else "?", self.unit))
        return self.memo[k]

    def ddmin(self, items):
        """A failing sub-list of ``items`` (which must fail) that is 1-minimal: split into
        n chunks, keep a failing chunk (back to n = 2) or a failing complement (n - 1),
        else split finer; stop when single items are the chunks and none can go."""
        self.phase = "ddmin"
        items, n = list(items), 2
        while len(items) >= 2:
            chunks = _split(items, n)
            sub = next((c for c in chunks if self.test(c)), None)
            if sub is not None:
                items, n = sub, 2
                continue
            if n > 2:                    # with two chunks the complements are the chunks
                sub = next((c for c in (_without(chunks, i) for i in range(n))
                            if self.test(c)), None)
                if sub is not None:
                    items, n = sub, n - 1
                    continue
            if n >= len(items):
                break
            n = min(len(items), 2 * n)
        return items

    def one_minimal(self, items):
        """Remove single items while the rest still fails, until no single one can go."""
        self.phase = "one-item removal"
        items, changed = list(items), True
        while changed:
            changed, i = False, 0
            while i < len(items) and len(items) > 1:
                rest = items[:i] + items[i + 1:]
                if self.test(rest):
                    items, changed = rest, True
                else:
                    i += 1
        return items

    def simplify(self, items, simpler):
        """Replace each item by the first of ``simpler(item)`` that still fails, again
        until none does; simpler(x) must yield only strictly simpler items (so it ends)."""
        self.phase = "simplify"
        items = list(items)
        for i in range(len(items)):
            again = True
            while again:
                again = False
                for s in simpler(items[i]):
                    candidate = items[:i] + [s] + items[i + 1:]
                    if self.test(candidate):
                        items, again = candidate, True
                        break
        return items

    def simplify_whole(self, items, simpler_lists):
        """The first of ``simpler_lists(items)`` that still fails, again until none
        does (a change to every item at once, e.g. moving them all)."""
        self.phase = "simplify"
        again = True
        while again:
            again = False
            for candidate in simpler_lists(items):
                if self.test(candidate):
                    items, again = candidate, True
                    break
        return items

    def shrink(self, items, simpler=None, simpler_lists=None):
        """ddmin, then (simpler items, simpler lists, one-item removal) until none of
        them changes anything."""
        if not self.test(items):
            raise ValueError("the input to shrink does not fail")
        items = self.ddmin(items)
        while True:
            before = items
            if simpler:
                items = self.simplify(items, simpler)
            if simpler_lists:
                items = self.simplify_whole(items, simpler_lists)
            items = self.one_minimal(items)
            if items == before:
                return items

    def elapsed(self):
        return time.monotonic() - self.t0


def _split(items, n):
    """``items`` in n (<= len(items)) contiguous chunks of near-equal length, in order."""
    q, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + q + (1 if i < r else 0)
        out.append(items[start:end])
        start = end
    return out


def _without(chunks, i):
    return [x for j, c in enumerate(chunks) if j != i for x in c]
