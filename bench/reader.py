"""Time and peak memory of a whole `predict` process for each heavy or hostile file (tests/hostile/heavy.py).

    python -m bench.reader [--checkpoint assets/checkpoints/rsna-pneumonia] [--only NAME ...]

Each file is written to a temporary folder, `python -m dprotonet_core predict --checkpoint C FILE` runs in a
child process (model loaded, as a user runs it), and the child's wall time and peak resident memory (from
wait4's rusage) are printed with what predict answered. The target: <= 40 s and <= 2 GB for any single file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_info
from tests.hostile.heavy import BOMBS

REPO = Path(__file__).resolve().parents[1]


def measure(path: Path, checkpoint: str, timeout: float) -> tuple[float, float, str]:
    """(seconds, peak MB, one-line outcome) of one predict process on `path`."""
    cmd = [sys.executable, "-m", "dprotonet_core", "predict", "--threads", "2", "--checkpoint", checkpoint,
           str(path)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return time.perf_counter() - start, usage.ru_maxrss / 1024, f"killed after {timeout:.0f} s"
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    out = proc.stdout.read().decode(errors="replace").strip().splitlines() if proc.stdout else []
    outcome = "no output"
    if out:
        try:
            answer = json.loads(out[-1])
            outcome = ("refused: " + answer["error"]) if "error" in answer else f"answered {answer['prediction']}"
        except (ValueError, KeyError):
            outcome = out[-1][:120]
    return seconds, usage.ru_maxrss / 1024, outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="assets/checkpoints/rsna-pneumonia")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    print(machine_info())
    print(f"checkpoint {args.checkpoint}; predict --threads 2; peak = the child's max resident set size")
    print("| file | expected | s | peak MB | outcome |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, expected) in BOMBS.items():
            if args.only and name not in args.only:
                continue
            path = Path(tmp) / name
            path.write_bytes(build())
            seconds, peak, outcome = measure(path, args.checkpoint, args.timeout)
            path.unlink()
            print(f"| {name} | {expected} | {seconds:.1f} | {peak:.0f} | {outcome[:110]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
