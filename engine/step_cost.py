"""What a step costs, learned from the steps the engine runs anyway.

Every decode or verify step is an observation: its sequences, its rows (one per sequence plus its
draft tokens) and its seconds. Observations go to buckets on a geometric grid of (sequences,
draft rows); a bucket's estimate is a low quantile of its recent observations (other work on the
machine only ever adds time, so the low end is the truest; one fresh fast observation corrects a
stale slow one). No monotone fit across buckets: a stale bucket would then hold its neighbours
hostage, and the drafting policy explores to refresh them instead. Plain steps give the cost by
running sequences. A drafting step is kept as what it took beyond the plain steps of its
sequences just before it (the least of the last few): a plain step's cost drifts as contexts grow
and the machine's load changes, and a drafting step set against plain steps from another part of
the run would read that drift as the cost of its rows. An unseen bucket is estimated from what is
known: the same sequences with fewer or more draft rows, else what as many more sequences add to
a plain step (this run's plain steps only, and not far past the most sequences measured; not
where plain steps are queued ahead, whose cost hides the host's work that a drafting step pays), else
the same from the nearest batch within 2x (or, at most SMALL_BATCH sequences, from any batch that
small), else nothing (None): the drafting policy then explores instead of trusting a guess.

Where plain steps are queued ahead, a plain step run otherwise (the engine waited on the tokens of
the step before it: the first, or the step after a drafting step) is kept apart: what it costs
beyond a queued one is the overlap a draft forgoes (`forgone`), learned in each run and not kept in
the file.

What was learned is kept per machine and build (model, device, dtype, threads, attention backend,
kernels, overlapped steps) in a small JSON file, so a second run starts informed; its values only seed the buckets
and give way to fresh observations. A seeded plain bucket is read scaled by the live plain cost
over the seeded one at the nearest batch that has both, so that a machine or a workload whose
steps cost more or less than when the file was written does not make plain steps look cheap or
dear; a seeded drafting bucket is scaled up by that ratio, never down, so that a machine that is
slower (or busier) than then does not make draft rows look free. A write merges this run's cells
into what the file holds by then.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

WINDOW = 16  # recent observations kept per bucket
QUANTILE = 0.25  # the estimate: this low quantile of a bucket's window
LEVEL_STEPS = 3  # a drafting step is set against the least of this many latest plain steps
FORMAT = 2  # the cache file's format: drafting cells hold the extra over the plain step
SAVE_EVERY = 512  # observations between two writes of the cache file
MIN_SAVE_S = 10.0
SMALL_BATCH = 8  # up to this many sequences, draft rows are read from any batch this small (_nearest_drafting)


class StepTimer(Protocol):
    def __call__(self, seqs: int, rows: int, measured_s: float) -> float:
        """The seconds a step of `seqs` sequences and `rows` rows is taken to cost."""


def measured(seqs: int, rows: int, measured_s: float) -> float:
    """The real clock: what the step took."""
    return measured_s


def _grid(limit: int) -> tuple[int, ...]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... up to `limit`: every point within 1.5x of the next."""
    points, x = [1, 2, 3], 4
    while x <= limit:
        points += [x, x + x // 2]
        x *= 2
    return tuple(p for p in points if p <= limit)


SEQ_GRID = _grid(1 << 16)
ROW_GRID = (0, *_grid(1 << 16))


@dataclass(frozen=True)
class CostKey:
    """What a step's cost depends on besides its shape."""

    model: str
    device: str
    dtype: str
    threads: int
    attention: str
    kernels: str
    # Plain steps queued ahead (EngineConfig.overlap_steps): their cost hides the host's, which a
    # drafting step's does not.
    overlap: bool = False

    def file_name(self) -> str:
        digest = hashlib.sha1(repr(self).encode()).hexdigest()[:16]
        return f"step_cost_{digest}.json"


class _Bucket:
    __slots__ = ("recent", "seeded", "_estimate")

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.seeded: float | None = None  # from the cache file, until observations arrive
        self._estimate: float | None = None  # kept until the next observation: the policy reads it often

    def add(self, seconds: float) -> bool:
        """Adds an observation; whether what the bucket tells changed (its estimate, or its turn
        from seeded to live): a low quantile of a window often stays where it was."""
        was_live, before = self.live, self.estimate()
        self.recent.append(seconds)
        self._estimate = None
        return not was_live or self.estimate() != before

    @property
    def live(self) -> bool:
        return bool(self.recent)

    def estimate(self) -> float | None:
        if not self.recent:
            return self.seeded
        if self._estimate is None:
            ordered = sorted(self.recent)
            self._estimate = ordered[int(QUANTILE * (len(ordered) - 1))]
        return self._estimate


@functools.lru_cache(maxsize=None)
def _nearest_drafting(n: int) -> tuple[int, ...]:
    """Sequence buckets to read draft costs from: this one, then those within 2x, nearest first;
    among batches of at most SMALL_BATCH sequences, every one of them: so few sequences make a step
    that reads the weights whatever it carries, and a draft row costs about the same at any of
    them (a short run at 4 sequences would otherwise learn from nothing what 1 already knows)."""
    x = SEQ_GRID[n]
    around = [i for i in range(len(SEQ_GRID)) if i != n and (
        x / 2 <= SEQ_GRID[i] <= 2 * x or max(x, SEQ_GRID[i]) <= SMALL_BATCH)]
    return (n, *sorted(around, key=lambda i: abs(i - n)))


def _beyond(before: tuple[int, float], last: tuple[int, float], x: int) -> float:
    """The extra of x draft rows past the largest measured size: at the slope of the last segment,
    but never steeper than the line from no rows through the last point, nor flatter than half
    of it. One noisy measurement would otherwise be magnified by the ratio of x to the segment's
    width, or (a segment that falls) make any number of rows past it look free: a line that is
    too flat is corrected by the drafting steps that measure their own cost, but each such step
    has paid for the error, and at a large batch one can cost several plain steps."""
    (x0, y0), (x1, y1) = before, last
    mean = max(0.0, y1 / x1)
    slope = min(max((y1 - y0) / (x1 - x0), mean / 2), mean)
    return y1 + slope * (x - x1)


def bucket_of(grid: tuple[int, ...], x: int) -> int:
    """The index of the grid point at or below x."""
    return max(0, bisect.bisect_right(grid, x) - 1)


class StepCost:
    """Seconds of a step by (sequences, draft rows); see the module docstring."""

    def __init__(self, key: CostKey | None = None, cache_dir: str | None = None) -> None:
        self.key = key
        self.path = os.path.join(cache_dir, key.file_name()) if key is not None and cache_dir else None
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._rows_of: dict[int, list[int]] = {}  # sequence bucket -> its row buckets that have a bucket, in order
        self._sync: dict[int, _Bucket] = {}  # sequence bucket -> plain steps not queued ahead (see forgone)
        self._unsaved = 0
        self._saved_at = time.monotonic()
        self.observations = 0
        # Answers (plain, extra, a bucket's known draft rows) kept until an observation changes an
        # estimate: a step's policy asks for the same points several times (gate, allocation, exploration).
        self._memo: dict[tuple, object] = {}
        if self.path is not None:
            self._load()

    # ------------------------------------------------------------------ learning
    def observe(self, seqs: int, draft_rows: int, seconds: float) -> None:
        if seqs <= 0 or seconds <= 0:
            return
        cell = (bucket_of(SEQ_GRID, seqs), bucket_of(ROW_GRID, draft_rows))
        self.observations += 1
        if draft_rows > 0:
            level = self._level(cell[0])
            if level is None:
                return  # nothing to set it against yet
            seconds -= level
        if self._bucket(cell).add(seconds):
            self._memo.clear()
        self._unsaved += 1
        if self.path is not None and self._unsaved >= SAVE_EVERY and time.monotonic() - self._saved_at > MIN_SAVE_S:
            self.save()

    def observe_sync(self, seqs: int, seconds: float) -> None:
        """A plain step not queued ahead where plain steps otherwise are: the host planned it
        after the previous step's tokens came back, and the device waited meanwhile."""
        if seqs <= 0 or seconds <= 0:
            return
        n = bucket_of(SEQ_GRID, seqs)
        bucket = self._sync.get(n)
        if bucket is None:
            bucket = self._sync[n] = _Bucket()
        if bucket.add(seconds):
            self._memo.clear()

    def _bucket(self, cell: tuple[int, int]) -> _Bucket:
        bucket = self._buckets.get(cell)
        if bucket is None:
            bucket = self._buckets[cell] = _Bucket()
            bisect.insort(self._rows_of.setdefault(cell[0], []), cell[1])
        return bucket

    def _level(self, n: int) -> float | None:
        """Where plain steps of bucket n stand now: the least of its latest ones, else its seeded
        or interpolated cost."""
        bucket = self._buckets.get((n, 0))
        if bucket is not None and bucket.recent:
            return min(itertools.islice(reversed(bucket.recent), LEVEL_STEPS))
        return self._plain(n)

    # ------------------------------------------------------------------ estimates
    def plain(self, seqs: int) -> float | None:
        """A step of `seqs` sequences without drafts: its bucket, else linear between the nearest
        measured batches around it, else the nearest one within 2x (a plain step's cost is smooth
        in its sequences; a batch that only ever runs beside a prefill is never measured alone)."""
        return self._plain_memo(bucket_of(SEQ_GRID, seqs))

    def measured(self, seqs: int) -> bool:
        """Whether this run has measured plain steps of about as many sequences (within 2x): what a
        drafting step costs is read against them. Until then the drafting policy runs plain steps,
        whatever a file seeded: one written while other work shared the machine reads plain steps
        dear, and the drafting steps set against them then make draft rows look free."""
        key = ("measured", bucket_of(SEQ_GRID, seqs))
        if key not in self._memo:
            x = SEQ_GRID[key[1]]
            self._memo[key] = any(r == 0 and b.live and x / 2 <= SEQ_GRID[n] <= 2 * x
                                  for (n, r), b in self._buckets.items())
        return self._memo[key]

    def forgone(self, seqs: int) -> float:
        """What a plain step not queued ahead costs beyond one that is (observe_sync), at the
        nearest batch within 2x that measured both in this run: the overlap lost where the engine
        waits on a drafting step's tokens to plan the next. 0.0 where none is known (or steps are
        never queued ahead)."""
        key = ("forgone", bucket_of(SEQ_GRID, seqs))
        if key not in self._memo:
            n = key[1]
            x = SEQ_GRID[n]
            nearest = min(((abs(i - n), sync.estimate() - plain) for i, sync in self._sync.items()
                           if sync.live and x / 2 <= SEQ_GRID[i] <= 2 * x and (plain := self._live(i)) is not None),
                          default=None)
            self._memo[key] = max(0.0, nearest[1]) if nearest is not None else 0.0
        return self._memo[key]

    def _plain(self, n: int) -> float | None:
        own = self._plain_at(n)
        if own is not None:
            return own
        x = SEQ_GRID[n]
        lower = next(((SEQ_GRID[i], e) for i in range(n - 1, -1, -1) if (e := self._plain_at(i)) is not None), None)
        upper = next(((SEQ_GRID[i], e) for i in range(n + 1, len(SEQ_GRID)) if (e := self._plain_at(i)) is not None),
                     None)
        lower = lower if lower is not None and 2 * lower[0] >= x else None
        upper = upper if upper is not None and upper[0] <= 2 * x else None
        if lower is not None and upper is not None:
            (x0, y0), (x1, y1) = lower, upper
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        near = lower or upper
        return near[1] if near is not None else None

    def _plain_memo(self, n: int) -> float | None:
        """_plain of bucket n, kept with the other answers until an estimate changes."""
        key = ("plain", n)
        if key not in self._memo:
            self._memo[key] = self._plain(n)
        return self._memo[key]

    def _plain_at(self, n: int) -> float | None:
        """Bucket n's plain estimate: as measured where this run measured it, else as seeded,
        scaled by what the nearest bucket measured against its own seeded value: a bucket this run
        never saw plain steps in (sequences joining a step after the policy counted them) would
        otherwise keep another workload's or another moment's cost."""
        bucket = self._buckets.get((n, 0))
        if bucket is None or bucket.estimate() is None:
            return None
        return bucket.estimate() if bucket.live else bucket.seeded * self._seed_scale(n)

    def _seed_scale(self, n: int) -> float:
        """Live over seeded plain cost at the bucket nearest n that has both (1.0 while none has)."""
        key = ("scale", n)
        if key not in self._memo:
            both = [(abs(i - n), b.estimate() / b.seeded) for (i, r), b in self._buckets.items()
                    if r == 0 and b.live and b.seeded]
            self._memo[key] = min(both)[1] if both else 1.0
        return self._memo[key]

    def extra(self, seqs: int, draft_rows: int) -> float | None:
        """What `draft_rows` draft tokens add to a step of `seqs` sequences (None: unknown). Where
        no drafting step of about as many sequences was measured, the nearest batch within 2x that
        has some stands in: what a draft row costs changes slowly with the batch."""
        if draft_rows <= 0:
            return 0.0
        key = ("extra", bucket_of(SEQ_GRID, seqs), draft_rows)
        if key not in self._memo:
            self._memo[key] = self._extra(key[1], draft_rows)
        return self._memo[key]

    def _extra(self, n: int, draft_rows: int) -> float | None:
        r = bucket_of(ROW_GRID, draft_rows)
        for near in _nearest_drafting(n):
            if self._plain_memo(near) is None:
                continue
            known = self._drafting_at(near, r)
            if known is None:
                known = self._from_rows(near, draft_rows)
            if known is None and not (self.key is not None and self.key.overlap):
                known = self._from_plain(near, draft_rows)  # rows cost as sequences do: not beside queued plain steps
            if known is not None:
                return max(0.0, known)
        return None

    def _drafting_at(self, n: int, r: int) -> float | None:
        """A drafting bucket's estimate (its extra over the plain step): a seeded one scaled up as
        seeded plain steps are (_plain_at) where plain steps now cost more than when it was
        written, never down: plain steps that cost less now may come from shorter contexts (another
        workload), which a draft row's own cost follows far less."""
        bucket = self._buckets.get((n, r))
        if bucket is None or bucket.estimate() is None:
            return None
        return bucket.estimate() if bucket.live else bucket.seeded * max(1.0, self._seed_scale(n))

    def observed(self, seqs: int, draft_rows: int) -> bool:
        """Whether steps of this shape were measured (or seeded from the cache file)."""
        return self._at(bucket_of(SEQ_GRID, seqs), bucket_of(ROW_GRID, draft_rows)) is not None

    def _at(self, n: int, r: int) -> float | None:
        bucket = self._buckets.get((n, r))
        return bucket.estimate() if bucket is not None else None

    def _from_rows(self, n: int, draft_rows: int) -> float | None:
        """An unseen bucket's extra from the measured draft-row buckets of these sequences: linear
        between the nearest ones, and nothing at no rows; past the last, see _beyond."""
        known = self._known_rows(n)
        lower = [p for p in known if p[0] <= draft_rows]
        upper = [p for p in known if p[0] > draft_rows]
        if lower and upper:
            (x0, y0), (x1, y1) = lower[-1], upper[0]
            return y0 + (y1 - y0) * (draft_rows - x0) / (x1 - x0)
        if len(lower) >= 2:
            return _beyond(lower[-2], lower[-1], draft_rows)
        return None

    def _from_plain(self, n: int, draft_rows: int) -> float | None:
        """Where these sequences measured no draft rows: what as many more sequences add to a plain
        step, at the slope to the most of them measured up to n + rows (the grid point at or below
        n + rows may not be measured, and can be far below it), of this run's plain steps only: one
        seeded by another run, at another moment, would read the two moments' difference as the
        cost of rows. Not past one grid step beyond the most sequences measured: a CPU's plain step
        can cost the same from 100 to 200 sequences and then rise, and a slope read below that
        knee, carried to hundreds of rows past it, made them look free. Nor from a slope that does
        not rise: that is noise between two buckets, not free rows."""
        base = self._live(n)
        x = SEQ_GRID[n] + draft_rows
        wider = next(((i, wide) for i in range(bucket_of(SEQ_GRID, x), n, -1)
                      if (wide := self._live(i)) is not None), None)
        if base is None or wider is None or wider[1] <= base or 1.5 * SEQ_GRID[wider[0]] < x:
            return None
        return (wider[1] - base) / (SEQ_GRID[wider[0]] - SEQ_GRID[n]) * draft_rows

    def _live(self, n: int) -> float | None:
        """Bucket n's plain estimate where this run measured plain steps there."""
        bucket = self._buckets.get((n, 0))
        return bucket.estimate() if bucket is not None and bucket.live else None

    def _known_rows(self, n: int) -> list[tuple[int, float]]:
        """(draft rows, extra) of every drafting bucket of these sequences that has one, by rows,
        after (0, 0) where the plain step is known."""
        key = ("rows", n)
        if key not in self._memo:
            known = [(0, 0.0)] if self._at(n, 0) is not None else []
            self._memo[key] = known + [(ROW_GRID[r], e) for r in self._rows_of.get(n, ())
                                       if r > 0 and (e := self._drafting_at(n, r)) is not None]
        return self._memo[key]

    # ------------------------------------------------------------------ the cache file
    def keep_nothing(self) -> None:
        """Writes nothing from now on (what the file held still seeds this run): this run's steps
        share the machine with other work of its own (the HumanEval job's tests beside
        generation), and what they cost then is not what a later run will see."""
        self.path = None

    def flush(self) -> None:
        """Writes what was learned since the last write, if anything: the engine calls it when it
        runs out of work, so that a job shorter than SAVE_EVERY steps still teaches the next run."""
        if self._unsaved:
            self.save()

    def save(self) -> None:
        """Writes this run's cells over what the file holds now: another engine (the other type of
        an interleaved benchmark, a server beside a job, a second replica) may have written cells
        since this one read it, and a cell this run only read from the file is not newer than it."""
        if self.path is None:
            return
        cells = {f"{n},{r}": seconds for (n, r), seconds in self._read().items()}
        for (n, r), b in self._buckets.items():
            if (b.live or f"{n},{r}" not in cells) and b.estimate() is not None:
                cells[f"{n},{r}"] = b.estimate()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.{id(self)}.tmp"
        with open(tmp, "w") as f:
            json.dump({"key": repr(self.key), "format": FORMAT, "seq_grid": SEQ_GRID[:64], "row_grid": ROW_GRID[:64],
                       "seconds": cells}, f)
        os.replace(tmp, self.path)
        self._unsaved = 0
        self._saved_at = time.monotonic()

    def _load(self) -> None:
        for cell, seconds in self._read().items():
            self._bucket(cell).seeded = seconds

    def _read(self) -> dict[tuple[int, int], float]:
        """The file's cells for this key (none where there is no file yet, a torn one, or another
        key's or format's)."""
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("key") != repr(self.key) or data.get("format") != FORMAT:
            return {}
        cells = {}
        for cell, seconds in data.get("seconds", {}).items():
            try:
                n, r = (int(x) for x in cell.split(","))
                seconds = float(seconds)
            except (ValueError, TypeError):
                continue
            if seconds > 0 or (r > 0 and math.isfinite(seconds)):  # a drafting cell may read below 0
                cells[(n, r)] = seconds
        return cells
