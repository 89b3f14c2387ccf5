#!/usr/bin/env python3
"""Instructions per request (valgrind's callgrind), for the workloads of bench.py: a count
that does not depend on what else the machine is doing, so before/after comparisons and
comparisons with other middlewares hold on a noisy shared machine.

    make bench-instructions     (valgrind, and .cache/bench for Starlette and starsessions)

Each contestant runs in a child process under callgrind twice, with N and 3N requests
after a warm-up; the difference over 2N is its cost per request, start-up cancelled out.
Rows are net of the bare app. Wall time on the same machine can rank things differently
(memory effects, syscalls): bench.py measures that.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
N = int(os.environ.get("BENCH_INSTRUCTION_REQUESTS", "500"))


def run_contestant(kind: str, name: str, workload: str, requests: int) -> None:
    """In the child: build the contestant, warm it up, then make `requests` requests."""
    import bench as B
    import bunway_session as bs
    if kind == "wsgi":
        store = bs.MemoryStore() if name == "memory" else bs.FileStore(tempfile.mkdtemp())
        def app(write: bool | None) -> Any:
            if write is None:
                return B.bare_app
            return bs.SessionMiddleware(B.make_app(lambda e: e["bunway.session"], write), secret=B.SECRET,
                                        store=store, resave=False)
        w3 = app(True)
        cookie = B.returning(w3) if workload != "bare" else None
        target, c = {"bare": (app(None), None), "W1": (app(True), None), "W2": (app(False), cookie),
                     "W3": (w3, cookie)}[workload]
        for _ in range(200 + requests):
            B.call(target, c)
        return

    async def asgi() -> None:
        middleware = {"bare": [],
                      "ours": [B.Middleware(bs.ASGISessionMiddleware, secret=B.SECRET, store=bs.MemoryStore(),
                                            resave=False, save_uninitialized=False)],
                      "floor": [B.Middleware(B.FloorASGI, data={})],
                      "starlette cookie": [B.Middleware(B.StarletteCookieSessions, secret_key=B.SECRET)]}
        if B.starsessions is not None:
            middleware["starsessions"] = [
                B.Middleware(B.starsessions.SessionMiddleware, store=B.starsessions.InMemoryStore(),
                             lifetime=86400, cookie_https_only=False),
                B.Middleware(B.starsessions.SessionAutoloadMiddleware)]
        layers = middleware[name]
        if workload == "bare":
            target, c = B.starlette_app(None, []), None
        else:
            w3 = B.starlette_app(True, layers)
            cookie = await B.asgi_cookie(w3, "connect.sid" if name in ("ours", "floor") else "session")
            target, c = {"W1": (B.starlette_app(True, layers), None), "W2": (B.starlette_app(False, layers), cookie),
                         "W3": (w3, cookie)}[workload]
        for _ in range(200 + requests):
            await B.call_asgi(target, c)
    asyncio.run(asgi())


def count(kind: str, name: str, workload: str) -> int:
    """Instructions per request of one contestant."""
    totals = []
    for requests in (N, 3 * N):
        done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                               os.path.abspath(__file__), "--child", kind, name, workload, str(requests)],
                              capture_output=True, text=True, check=True)
        totals.append(int(re.search(r"Collected : (\d+)", done.stderr).group(1)))  # type: ignore[union-attr]
    return (totals[1] - totals[0]) // (2 * N)


def main() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): no instruction counts")
        return 1
    import bench as B
    print(f"instructions per request (callgrind; {N} and {3 * N} requests), net of the bare app")
    bare = count("wsgi", "memory", "bare")
    print(f"\nWSGI (bare app: {bare})")
    only = os.environ.get("BENCH_ONLY")   # "asgi" or "wsgi": one half
    for workload in ("W1", "W2", "W3") if only != "asgi" else ():
        print(f"  memory {workload}  {count('wsgi', 'memory', workload) - bare:8,}")
    if B.starlette is None:
        print("\nASGI: Starlette is not installed: no ASGI rows (make bench-instructions installs it)")
        return 0
    names = ["ours", "floor", "starlette cookie"] + (["starsessions"] if B.starsessions is not None else [])
    bare = count("asgi", "bare", "bare")
    print(f"\nASGI, a Starlette app (bare app: {bare})")
    print(f"  {'workload':<9}" + "".join(f"{name:>18}" for name in names))
    for workload in ("W1", "W2", "W3"):
        costs = [count("asgi", name, workload) - bare for name in names]
        print(f"  {workload:<9}" + "".join(f"{cost:18,}" for cost in costs))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        run_contestant(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        sys.exit(0)
    sys.exit(main())
