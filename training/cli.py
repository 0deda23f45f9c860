"""The error policy shared by every command-line entry point.

    if __name__ == "__main__":
        sys.exit(run_main(main))

An expected failure (a bad value, a missing or unreadable file, a data or configuration error: the
exception types in :data:`EXPECTED_ERRORS`, and ``SystemExit`` with a message) prints one line,
``error: <message>``, on stderr and exits with status 2. With ``--debug`` on the command line the full
traceback is printed before that line. Anything else (a bug) keeps Python's traceback and status 1.
Parsers declare the flag with :func:`add_debug_flag` so that ``--help`` lists it.
"""
from __future__ import annotations

import argparse
import copy
import sys
import traceback
from typing import Callable, Optional, Sequence

EXIT_ERROR = 2

# ValueError covers the project's configuration/data errors (GenotypeError, SearchSpaceError, ConfigError,
# PackedModelError, OOVError, BudgetError, NonFiniteTensorError, json.JSONDecodeError); RuntimeError covers
# DataError, TextSourceError, TooManySkippedBatches and refusals such as a locked or mismatched --out.
EXPECTED_ERRORS = (ValueError, RuntimeError, OSError)


def _yaml_error():
    try:
        import yaml

        return (yaml.YAMLError,)
    except ImportError:  # pragma: no cover
        return ()


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The CLIs' ``--help``: the module docstring as written, and each option's default after its help
    (options without help text too; not for defaults of None or False, which mean "not given")."""

    def _format_action(self, action):
        if action.help is None and action.option_strings and not _unset(action.default):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        if _unset(action.default) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _unset(default) -> bool:
    return default is None or default is False or default == argparse.SUPPRESS or default == ""


def add_debug_flag(parser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the full traceback (default: a one-line message)")


def one_line(e: BaseException) -> str:
    """The exception's message on one line (whitespace runs, newlines included, become one space)."""
    msg = " ".join(str(e).split())
    return msg or type(e).__name__


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)``; turn an expected failure into ``error: ...`` on stderr and status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        return main(args)
    except SystemExit as e:
        if isinstance(e.code, str):  # raise SystemExit("message") inside a CLI
            return _report(e, debug)
        raise
    except EXPECTED_ERRORS + _yaml_error() as e:
        return _report(e, debug)


def _report(e: BaseException, debug: bool) -> int:
    sys.stdout.flush()
    if debug:
        traceback.print_exc()
    msg = one_line(e) if not isinstance(e, SystemExit) else " ".join(str(e.code).split())
    if msg.startswith("error: "):
        msg = msg[len("error: "):]
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return EXIT_ERROR


def number(minimum: float = None, above: float = None, integer: bool = False):
    """An argparse ``type``: a finite number, ``>= minimum`` and/or ``> above``; an error message otherwise.

        p.add_argument("--target-ratio", type=number(minimum=1))
    """
    import argparse
    import math

    bounds = " and ".join(([f">= {minimum:g}"] if minimum is not None else [])
                          + ([f"> {above:g}"] if above is not None else []))
    kind = "an integer" if integer else "a finite number"
    want = f"{kind} {bounds}".strip()

    def parse(text: str):
        try:
            v = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if not math.isfinite(v) or (minimum is not None and v < minimum) or (above is not None and v <= above):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return v

    parse.__name__ = "number"
    return parse


# ------------------------------------------------------------------------------------------ size budget
# One name for the size budget in every CLI (train_search.py, mixed_precision.py, quantize_lm.py):
# --budget-bytes N (packed payload bytes) or --budget-ratio R (a compression factor: fp32 bytes / R).
# Older spellings still work for one release, with a warning naming the new one.
DEPRECATED_BUDGET_FLAGS = {"--target-bytes": "--budget-bytes", "--target-ratio": "--budget-ratio",
                           "--compression": "--budget-ratio", "--target-mb": "--budget-bytes (in bytes)"}


def _deprecated_flag(new: str):
    import argparse

    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"warning: {option_string} is deprecated; use {new}", file=sys.stderr, flush=True)
            if option_string == "--target-mb":
                namespace.budget_bytes = values * 1e6
            else:
                setattr(namespace, self.dest, values)

    return Deprecated


def add_budget_args(parser, required: bool = False, default_ratio: Optional[float] = None, what: str = "model"):
    """``--budget-bytes`` / ``--budget-ratio`` (mutually exclusive) and their deprecated aliases; resolve
    them with :func:`resolve_budget`."""
    g = parser.add_mutually_exclusive_group(required=required)
    dflt = f" (default {default_ratio:g})" if default_ratio is not None else ""
    g.add_argument("--budget-bytes", type=number(above=0), help=f"packed {what} size budget in bytes")
    g.add_argument("--budget-ratio", type=number(above=0),
                   help=f"budget = fp32 {what} bytes / R, a compression factor R >= 1{dflt}")
    g.add_argument("--target-bytes", dest="budget_bytes", type=number(above=0), action=_deprecated_flag("--budget-bytes"),
                   help="deprecated: --budget-bytes")
    g.add_argument("--target-mb", dest="budget_bytes", type=number(above=0), action=_deprecated_flag("--budget-bytes"),
                   help="deprecated: --budget-bytes (MB = 1e6 bytes)")
    for flag in ("--target-ratio", "--compression"):
        g.add_argument(flag, dest="budget_ratio", type=number(minimum=1), action=_deprecated_flag("--budget-ratio"),
                       help="deprecated: --budget-ratio")


def resolve_budget(args, fp32_bytes: float, default_ratio: Optional[float] = None) -> Optional[float]:
    """The budget in bytes from ``args.budget_bytes`` / ``args.budget_ratio`` (None when neither is given
    and there is no default). A ratio below 1 is read as a fraction of the fp32 bytes (the older meaning of
    mixed_precision.py's --budget-ratio), with a warning."""
    if getattr(args, "budget_bytes", None) is not None:
        return float(args.budget_bytes)
    r = getattr(args, "budget_ratio", None)
    if r is None:
        r = default_ratio
    if r is None:
        return None
    if r < 1:
        print(f"warning: --budget-ratio {r:g} < 1 is read as a fraction of the fp32 size (budget = {r:g} x fp32); "
              f"this reading is deprecated: give the compression factor {1 / r:g}", file=sys.stderr, flush=True)
        return float(r) * fp32_bytes
    return fp32_bytes / float(r)
