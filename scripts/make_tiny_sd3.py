#!/usr/bin/env python3
"""Writes a tiny random-weight SD3 pipeline (diffusers layout, project-made tokenizers) to OUT.

    .venv/bin/python scripts/make_tiny_sd3.py OUT [--variant sd3|sd35m] [--seed N]
"""
import argparse
import pathlib
import sys

# Appended, not prepended: scripts/goldens/tokenizers.py must not shadow the tokenizers package.
sys.path.append(str(pathlib.Path(__file__).resolve().parent / "goldens"))
from _tiny_sd3 import build_pipeline  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--variant", default="sd3", choices=["sd3", "sd35m"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    build_pipeline(pathlib.Path(a.out), a.variant, a.seed)
    print(a.out)
