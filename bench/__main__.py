"""Run every benchmark in ``bench/`` and print each one's table (``make bench``).

    uv run python -m bench [--quick] [--only NAME[,NAME...]] [--soak]

Each benchmark module runs in its own process (``python -m bench.NAME``), so
one's emulator, event loop or memory cannot skew another's figures. Modules
that are not present are skipped; ``--quick`` is passed to the modules that
take it. ``--soak`` runs the soak (``bench/soak.py``, quick with ``--quick``)
after the benchmarks. The exit status is non-zero if any benchmark, or the
soak, failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

#: Known benchmarks, in the order they run; any other ``*_bench.py`` runs after them.
KNOWN = ("worker_bench", "emulator_bench", "results_bench", "servicebus_bench", "sdk_gap_bench")
#: Arguments for modules that have no ``--quick`` flag of their own.
QUICK_FALLBACK = {"worker_bench": ["--noop", "1000", "--repeat", "1"]}

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Benchmark modules present: the known ones first, then any others found."""
    found = sorted(p.stem for p in HERE.glob("*_bench.py"))
    return [name for name in KNOWN if name in found] + [n for n in found if n not in KNOWN]


def quick_args(name: str) -> list[str]:
    """``--quick`` if the module takes it, else a smaller run where one is known."""
    spec = importlib.util.find_spec(f"bench.{name}")
    source = Path(spec.origin).read_text() if spec and spec.origin else ""
    if '"--quick"' in source:
        return ["--quick"]
    return QUICK_FALLBACK.get(name, [])


def run(name: str, quick: bool) -> tuple[int, float]:
    args = quick_args(name) if quick else []
    print(f"\n=== {name} {' '.join(args)}".rstrip(), flush=True)
    started = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", f"bench.{name}", *args])
    return code, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (where supported)")
    parser.add_argument("--only", default="", help="comma-separated module names to run")
    parser.add_argument("--soak", action="store_true", help="then run the soak (bench/soak.py)")
    args = parser.parse_args(argv)
    present = discover()
    wanted = [n.strip() for n in args.only.split(",") if n.strip()] or list(KNOWN) + [
        n for n in present if n not in KNOWN
    ]
    summary = []
    for name in wanted:
        if name not in present:
            print(f"\n=== {name}: not present, skipped", flush=True)
            summary.append((name, "skipped", 0.0))
            continue
        code, seconds = run(name, args.quick)
        summary.append((name, "ok" if code == 0 else f"failed (exit {code})", seconds))
    if args.soak:
        code, seconds = run("soak", args.quick)
        summary.append(("soak", "ok" if code == 0 else f"failed (exit {code})", seconds))
    print("\n=== summary")
    for name, status, seconds in summary:
        print(f"{name:<20} {status:<18} {seconds:>7.1f} s")
    return 0 if all(s in ("ok", "skipped") for _, s, _ in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
