"""Runs the test suite with the wall clock moved, to show it passes on any date.

    python .ci/timeshift.py [--python PY] [OFFSET ...]      (default: -1y +1y +10y)

For each offset (e.g. -1y, +10y, +30d) a sitecustomize module, first on PYTHONPATH, moves
time.time and time.time_ns before anything else is imported, so `now=time.time` defaults
and child processes see the moved clock. (datetime's C clock is left alone: extension
modules such as pydantic's need the C datetime, and neither the module nor its tests ask
datetime for the date.) File times, monotonic clocks and other programs (redis-server)
keep the real time, as the clocks of a real deployment need not agree either. Each run's
unittest output follows its heading; exits 1 if any run fails.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

SITECUSTOMIZE = '''\
import os, time
_shift = float(os.environ.get("BUNWAY_CLOCK_SHIFT_S") or 0)
if _shift:
    _real_time, _real_time_ns = time.time, time.time_ns
    def _shifted_time():
        return _real_time() + _shift
    def _shifted_time_ns():
        return _real_time_ns() + int(_shift * 1e9)
    time.time, time.time_ns = _shifted_time, _shifted_time_ns
'''

UNITS = {"y": 365.2425 * 86400, "d": 86400, "h": 3600, "s": 1}


def seconds(offset: str) -> float:
    match = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)([ydhs])", offset)
    if not match:
        raise SystemExit(f"timeshift: bad offset {offset!r}; write it like -1y, +10y, +30d")
    return float(match.group(1)) * UNITS[match.group(2)]


def clock_moved(python: str, env: dict[str, str], shift: float) -> bool:
    """Does the shifted interpreter see time.time() and time.time_ns() moved by `shift`?"""
    probe = "import time; print(time.time(), time.time_ns() / 1e9)"
    before = time.time()
    out = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True, timeout=60,
                         check=False).stdout.split()
    return len(out) == 2 and all(abs(float(value) - before - shift) < 60 for value in out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("offsets", nargs="*", default=["-1y", "+1y", "+10y"])
    args = parser.parse_args()
    failed = []
    with tempfile.TemporaryDirectory(prefix="bunway-timeshift-") as folder:
        with open(os.path.join(folder, "sitecustomize.py"), "w", encoding="utf-8") as file:
            file.write(SITECUSTOMIZE)
        for offset in args.offsets:
            path = os.pathsep.join(p for p in (folder, os.environ.get("PYTHONPATH")) if p)
            env = {**os.environ, "PYTHONPATH": path, "BUNWAY_CLOCK_SHIFT_S": str(seconds(offset))}
            print(f"== the suite with the clock moved by {offset}", flush=True)
            if not clock_moved(args.python, env, seconds(offset)):
                print(f"the clock did not move by {offset} in {args.python}: no run")
                failed.append(offset)
                continue
            try:
                done = subprocess.run([args.python, "-m", "unittest"], env=env, timeout=args.timeout, check=False)
                ok = done.returncode == 0
            except subprocess.TimeoutExpired:
                print(f"timed out after {args.timeout:.0f} s")
                ok = False
            if not ok:
                failed.append(offset)
    print(f"timeshift: {len(args.offsets) - len(failed)} of {len(args.offsets)} offsets green"
          + (f"; red: {' '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
