"""Every command-line tool answers ``--help`` with its defaults (training.cli.HelpFormatter)."""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from tests.conftest import run_cli
from training.cli import HelpFormatter

ROOT = Path(__file__).resolve().parents[1]
CLIS = sorted(p.name for p in ROOT.glob("*.py") if "ArgumentParser(" in p.read_text(encoding="utf-8"))


def test_the_formatter_shows_defaults_but_not_unset_ones():
    p = argparse.ArgumentParser(description="line one\n  kept as written", formatter_class=HelpFormatter)
    p.add_argument("--beam", type=float, default=15.0)
    p.add_argument("--space", default="tdnnf_demo", help="search space name")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (%(default)s)")
    p.add_argument("--out", default=None, help="output dir")
    p.add_argument("--resume", action="store_true", help="continue")
    text = " ".join(p.format_help().split())
    assert "line one kept as written" in " ".join(p.format_help().split())
    assert "  kept as written" in p.format_help()  # the description is not re-wrapped
    assert "--beam BEAM (default: 15.0)" in text
    assert "search space name (default: tdnnf_demo)" in text
    assert "learning rate (0.1)" in text and "(0.1) (default" not in text
    assert "output dir --resume" in text and "(default: None)" not in text and "(default: False)" not in text


def test_every_cli_uses_the_shared_formatter():
    missing = []
    for name in CLIS + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse((ROOT / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in \
                    ("ArgumentParser", "add_parser"):
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("formatter_class"), ast.Name) and kw["formatter_class"].id == "HelpFormatter"):
                    missing.append(f"{name}:{node.lineno}")
    assert not missing, f"argument parsers without formatter_class=HelpFormatter: {missing}"


@pytest.mark.parametrize("cli", CLIS)
def test_help_lists_defaults(cli):
    out = run_cli([cli, "--help"], timeout=120).stdout
    assert out.startswith("usage:") and "(default: " in out, out[-2000:]
