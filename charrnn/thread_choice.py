"""How many of numba's threads a run's updates use, chosen by timing them: all of them, or one.

A parallel loop's threads wait for each other at its end, and numba's OpenMP threads wait by
spinning. Where other work shares the cores (a second run, say), a thread may spin through its
whole time slice while the thread it waits for is not running: measured on a 2-core Zen 4, two
runs of `--hidden 32 --batch 8` at once did 45,000 characters/s each against 1,040,000 alone,
and on one thread each 812,000-858,000; the default 1x512 LSTM lost nothing to it. So a run
times a few updates on the other side, and keeps the faster side: after its first few updates,
then FIRST_WAIT updates after a choice (twice as many after each trial that kept the side), at
most EVERY seconds apart, and at once when its updates have all become SLOWER times as slow as
when it chose. A trial's update far slower than the side chosen ends the trial: its threads
spin, and more such updates would cost more than the trial can tell.

The numbers do not depend on the side: one thread runs the blocks all the threads would
(kernels/_jit.fewer_threads), so a run is the same bit for bit whatever was chosen, and when.
"""
import statistics
from collections import deque
from contextlib import nullcontext

import numba

from .kernels._jit import fewer_threads

TRIAL = 5  # updates timed on each side
EVERY = 30.0  # seconds of updates between two trials at most
FIRST_WAIT = 200  # updates from a choice to the next trial; doubled each time a trial keeps the side
SLOWER = 2.0  # updates this many times as slow as the side's time when chosen start a trial; a
# trial's update this many times as slow as the side chosen ends it


class ThreadChoice:
    """Call side() around each update, and timed(dt) with its time after it (not the first
    update's, which loads the kernels)."""

    def __init__(self):
        self.can_choose = numba.get_num_threads() > 1
        self.serial = False  # the side chosen: one thread, or all
        self.recent = deque(maxlen=TRIAL)  # the last updates' times on the side chosen
        self.trial = None  # while a trial runs: the times of its updates on the other side
        self.chosen_time = None  # the median time of an update on the side when it was chosen
        self.since, self.count = 0.0, 0  # seconds and updates since then
        self.wait = FIRST_WAIT  # updates from then to the next trial

    def side(self):
        """The context of the next update: one thread or all (the other side during a trial)."""
        serial = self.serial != (self.trial is not None)
        return fewer_threads(1) if serial and self.can_choose else nullcontext()

    def timed(self, dt: float):
        if not self.can_choose:
            return
        if self.trial is not None:
            self.trial.append(dt)
            now = statistics.median(self.recent)
            if dt > SLOWER * now:  # the other side is far slower (spinning threads): no need of more
                self._chosen(self.serial, now)
                self.wait *= 2
            elif len(self.trial) == TRIAL:
                other = statistics.median(self.trial)
                if other < now:
                    self.recent = deque(self.trial, maxlen=TRIAL)
                    self._chosen(not self.serial, other)
                    self.wait = FIRST_WAIT
                else:
                    self._chosen(self.serial, now)
                    self.wait *= 2
            return
        self.recent.append(dt)
        self.since += dt
        self.count += 1
        if len(self.recent) == TRIAL and (self.chosen_time is None or self.since >= EVERY or self.count >= self.wait
                                          or min(self.recent) > SLOWER * self.chosen_time):
            self.trial = []

    def _chosen(self, serial, time):
        self.serial, self.chosen_time, self.trial, self.since, self.count = serial, time, None, 0.0, 0
