#!/usr/bin/env python
"""Rewrite packed Transformer LM files of format version 1 as version 2, in place.

    python upgrade_lm_file.py exp/paper_demo/lm/*/model.safetensors

Version 2 stores the vocabulary compressed (``lm/quant.py``: about 0.4x the bytes of version 1's JSON
list); the tensors are copied byte for byte and the other metadata kept, and the new file must load as
the same model and vocabulary before it replaces the old one, and a ``size.json`` beside it gets the new
``file_bytes`` and ``header_bytes``. Version 2 files are left as they are.
Every reader still loads version 1, so this only changes a file's size (what the system table's file
ratio counts); a fresh ``quantize_lm.py`` run writes version 2 itself. Prints the bytes before and after.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lm.quant import header_bytes, upgrade_packed_lm
from training.cli import HelpFormatter, add_debug_flag, run_main
from training.safe_io import write_json_atomic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("files", nargs="+", help="packed LM files (quantize_lm.py's model.safetensors)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    for f in args.files:
        before, after = upgrade_packed_lm(f)
        size_json = Path(f).parent / "size.json"
        if after != before and size_json.is_file():
            size = json.loads(size_json.read_text())
            if "file_bytes" in size:
                size.update(file_bytes=after, header_bytes=header_bytes(f))
                write_json_atomic(size, size_json)
        print(f"{f}: {before:,} -> {after:,} bytes" + ("" if after != before else " (already version 2)"))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
