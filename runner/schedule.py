"""Running an experiment's independent systems at the same time (``run_experiments.py --jobs N``).

A :class:`Task` is one system's (or one LM step's) chain of stages; it starts once its inputs exist
(``ready``), and at most ``jobs`` tasks run at once, each in a thread that waits on its stage
subprocesses. The CPU threads are shared out when a stage starts: :meth:`Scheduler.stage_threads` gives
it ``threads // (tasks running)``, at least 1, so a stage that runs alone (the fp32 baseline every other
system starts from) gets them all, and two stages side by side get half each. One training stage's
threads do not scale linearly, so on 2 cores two 1-thread fine-tunings side by side finish sooner than
the same two in turn with 2 threads each (``bench/bench_jobs.py``), and single-threaded work (process
start-up, decoding) overlaps fully.

The first task that fails stops the stages still running (:func:`runner.console.stop_all_stages`), and
its error is raised once every thread has ended; so is a Ctrl-C or SIGTERM. Nothing else changes: each
stage's files, logs and resume logic are those of a one-at-a-time run, so a killed parallel run is
continued by a serial one and the other way round.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from runner.console import stop_all_stages


@dataclass
class Task:
    """``run`` does the work; ``ready`` says whether its inputs exist (polled); ``after`` names tasks of
    the same run that must have ended first (a file can exist before the task writing it has ended and
    released what it holds); ``waits_for`` names the inputs for the message when they never come. Tasks
    start in the order given, among those ready."""
    name: str
    run: Callable[[], None]
    ready: Callable[[], bool] = lambda: True
    after: List[str] = field(default_factory=list)
    waits_for: str = ""


_current = threading.local()  # the scheduler of the task this thread runs, if any


def current_scheduler() -> Optional["Scheduler"]:
    return getattr(_current, "scheduler", None)


@dataclass
class Scheduler:
    jobs: int
    threads: int
    poll_s: float = 0.5
    _running: Dict[str, threading.Thread] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    stopping: threading.Event = field(default_factory=threading.Event)  # set: start no further stage

    def stage_threads(self) -> int:
        """CPU threads for a stage starting now: an equal share among the running tasks."""
        with self._cond:
            return max(1, self.threads // max(1, len(self._running)))

    def run(self, tasks: List[Task]) -> List[Task]:
        """Run every task whose inputs come to exist; returns the tasks that never became ready (their
        inputs are made by no task of this run). Raises the first task's error, after stopping the rest."""
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        pending = list(tasks)
        names = {t.name for t in tasks}
        ended: set = set()
        errors: List[BaseException] = []

        def work(t: Task) -> None:
            _current.scheduler = self
            try:
                t.run()
            except BaseException as e:  # reported by the scheduling thread
                errors.append(e)
            finally:
                with self._cond:
                    self._running.pop(t.name, None)
                    ended.add(t.name)
                    self._cond.notify_all()

        try:
            with self._cond:
                while not errors:
                    for t in [t for t in pending if all(a in ended or a not in names for a in t.after)
                              and t.ready()]:
                        if len(self._running) >= self.jobs:
                            break
                        pending.remove(t)
                        th = threading.Thread(target=work, args=(t,), name=t.name, daemon=True)
                        self._running[t.name] = th
                        th.start()
                    if not self._running:
                        break  # nothing runs and nothing left is ready: the rest never will be
                    self._cond.wait(self.poll_s)
        except BaseException:
            self._stop()
            raise
        if errors:
            self._stop()
            raise errors[0]
        return pending

    def _stop(self) -> None:
        """Stop the running stages and wait for their threads (a stage started while stopping is stopped
        on the next round)."""
        self.stopping.set()
        with self._cond:
            threads = list(self._running.values())
        for th in threads:
            while th.is_alive():
                stop_all_stages()
                th.join(1.0)
