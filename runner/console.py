"""What the experiment runner shows on the terminal, and how it runs one stage.

:class:`Console` prints one line when a stage starts and when it ends, one result line per finished
system, and (on a terminal only) a live progress line: the stage's own progress bar (epoch/step, ETA)
forwarded from its stderr. ``quiet`` prints nothing. Everything a stage writes still goes to its log
file; progress-bar frames (carriage-return updates) go only to the console.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, TextIO

_BAR = re.compile(r"\d+%\||\d+/\d+ \[")  # a tqdm frame: "45%|####  | 9/20 [00:10<00:12, ...]"


class Console:
    def __init__(self, quiet: bool = False, stream: Optional[TextIO] = None):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        isatty = getattr(self.stream, "isatty", None)
        self.live = (not quiet) and bool(isatty and isatty())
        self._bar_shown = False

    def line(self, text: str) -> None:
        """A line that stays (stage started/finished, results)."""
        if self.quiet:
            return
        self._clear()
        print(text, file=self.stream, flush=True)

    def progress(self, text: str) -> None:
        """Replace the live progress line (terminal only)."""
        if not self.live:
            return
        width = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r" + text[: max(10, width - 1)] + "\x1b[K")
        self.stream.flush()
        self._bar_shown = True

    def _clear(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\x1b[K")
            self._bar_shown = False


def run_stage(cmd: List[str], log_file: Path, console: Optional[Console] = None, label: str = "") -> float:
    """Run ``cmd``; its stdout and stderr go to ``log_file``, its progress-bar frames to the console
    (prefixed with ``label``). Returns the seconds it took; a failure raises RuntimeError with the log's
    tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_file, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.PIPE)
        try:
            _forward_output(proc, f, console, label)
        except BaseException:
            # the runner is stopping (Ctrl-C, SIGTERM via stop_on_sigterm, an error): stop the stage too,
            # so no orphan keeps writing into the system's directory
            stop_process(proc)
            raise
        rc = proc.wait()
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
                    console.progress(f"{label} {text.strip()}")
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
