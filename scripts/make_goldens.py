#!/usr/bin/env python3
"""Produces the reference outputs ("goldens") the C++ tests compare against.

Each module in scripts/goldens/ has `main(out_dir: pathlib.Path)` and writes its files under
OUT/<module name>/ using diffusers/transformers on CPU in float32 from tiny random-weight models
saved in the real folder layouts. A module is re-run only when its source changed (stamp file).

    .venv/bin/python scripts/make_goldens.py OUT [NAME ...]
"""
import hashlib
import importlib.util
import pathlib
import sys
import time


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    only = set(sys.argv[2:])
    here = pathlib.Path(__file__).resolve().parent / "goldens"
    for src in sorted(here.glob("*.py")):
        name = src.stem
        if name.startswith("_") or (only and name not in only):
            continue
        # Re-run when the module or the shared helpers change.
        digest = hashlib.sha256(src.read_bytes())
        for shared in sorted(here.glob("_*.py")):
            digest.update(shared.read_bytes())
        stamp = out / name / ".stamp"
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            print(f"goldens/{name}: up to date")
            continue
        (out / name).mkdir(parents=True, exist_ok=True)
        spec = importlib.util.spec_from_file_location(f"goldens_{name}", src)
        mod = importlib.util.module_from_spec(spec)
        # Appended, not prepended: scripts/goldens/tokenizers.py must not shadow the `tokenizers` package.
        if str(here) not in sys.path:
            sys.path.append(str(here))
        spec.loader.exec_module(mod)
        t0 = time.time()
        mod.main(out / name)
        stamp.write_text(digest.hexdigest())
        print(f"goldens/{name}: written in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
