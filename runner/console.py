"""What the experiment runner shows on the terminal, and how it runs one stage.

:class:`Console` prints one line when a stage starts and when it ends, one result line per finished
system, and (on a terminal only) a live progress line: the stage's own progress bar (epoch/step, ETA)
forwarded from its stderr; with several stages running at once (``run_experiments.py --jobs``), the
live line holds each one's latest frame. ``quiet`` prints nothing. Everything a stage writes still goes
to its log file; progress-bar frames (carriage-return updates) go only to the console. Every stage
started by :func:`run_stage` is registered until it ends, so :func:`stop_all_stages` can stop the ones
still running when the runner stops.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, TextIO

_BAR = re.compile(r"\d+%\||\d+/\d+ \[")  # a tqdm frame: "45%|####  | 9/20 [00:10<00:12, ...]"


class Console:
    def __init__(self, quiet: bool = False, stream: Optional[TextIO] = None):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        isatty = getattr(self.stream, "isatty", None)
        self.live = (not quiet) and bool(isatty and isatty())
        self._bar_shown = False
        self._frames: Dict[str, str] = {}  # the latest progress frame of each running stage
        self._lock = threading.Lock()  # stages running in several threads print through one console

    def line(self, text: str) -> None:
        """A line that stays (stage started/finished, results)."""
        if self.quiet:
            return
        with self._lock:
            self._clear()
            print(text, file=self.stream, flush=True)
            self._draw()

    def progress(self, text: str, key: str = "") -> None:
        """Replace stage ``key``'s frame in the live progress line (terminal only)."""
        if not self.live:
            return
        with self._lock:
            self._frames[key] = text
            self._draw()

    def progress_done(self, key: str = "") -> None:
        """Drop stage ``key``'s frame from the live progress line."""
        with self._lock:
            if self._frames.pop(key, None) is not None and self.live:
                self._clear()
                self._draw()

    def _draw(self) -> None:
        if not self.live or not self._frames:
            return
        width = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r" + " | ".join(self._frames.values())[: max(10, width - 1)] + "\x1b[K")
        self.stream.flush()
        self._bar_shown = True

    def _clear(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\x1b[K")
            self._bar_shown = False


_LIVE: "set[subprocess.Popen]" = set()  # stages started by run_stage and not yet ended
_LIVE_LOCK = threading.Lock()


def run_stage(cmd: List[str], log_file: Path, console: Optional[Console] = None, label: str = "",
              env: Optional[Dict[str, str]] = None) -> float:
    """Run ``cmd`` (with environment ``env``, default this process's); its stdout and stderr go to
    ``log_file``, its progress-bar frames to the console (prefixed with ``label``). Returns the seconds it
    took; a failure raises RuntimeError with the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_file, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.PIPE, env=env)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            _forward_output(proc, f, console, label)
            rc = proc.wait()
        except BaseException:
            # the runner is stopping (Ctrl-C, SIGTERM via stop_on_sigterm, an error): stop the stage too,
            # so no orphan keeps writing into the system's directory
            stop_process(proc)
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
            if console is not None:
                console.progress_done(label)
    if rc != 0:
        raise RuntimeError(f"stage failed (exit {rc}): {' '.join(cmd)}: {last_error(log_file)} (log: {log_file})")
    return time.time() - t0


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM ``proc``, then SIGKILL it if it has not ended after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_all_stages() -> None:
    """Stop every stage :func:`run_stage` started that is still running (other threads' stages too)."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        stop_process(proc)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit(143) in this process, so ``finally`` blocks and :func:`run_stage`'s
    clean-up run (the default SIGTERM action ends the process at once and leaves its stage running)."""
    def _handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _handler)


def _forward_output(proc: subprocess.Popen, f, console: Optional[Console], label: str) -> None:
    """Copy ``proc``'s stderr into the log file ``f`` until it closes; progress-bar frames go to the
    console instead."""
    pending = b""
    while True:
        chunk = os.read(proc.stderr.fileno(), 65536)
        if not chunk:
            break
        pending += chunk
        # complete segments end with \n (a log line) or \r (a progress-bar frame)
        parts = re.split(rb"([\r\n])", pending)
        pending = parts[-1]  # an unfinished segment
        for seg, end in zip(parts[0:-1:2], parts[1::2]):
            text = seg.decode("utf-8", errors="replace")
            if _BAR.search(text):
                if console is not None:
                    console.progress(f"{label} {text.strip()}", key=label)
                continue
            if text.strip() or end == b"\n":
                f.write(text + "\n")
        f.flush()
    if pending and not _BAR.search(pending.decode("utf-8", errors="replace")):
        f.write(pending.decode("utf-8", errors="replace"))


def last_error(log_file: Path) -> str:
    """The last ``error: ...`` line of a stage's log, else its last non-empty line."""
    lines = [l.strip() for l in open(log_file, errors="replace").read().splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:") or ": error:" in l]
    return (errors or lines or ["(empty log)"])[-1]
