#!/usr/bin/env python3
"""Per-request cost of bunway_session: WSGI against Beaker and a hand-written floor; ASGI
(a Starlette app) against Starlette's cookie SessionMiddleware and starsessions.

    make bench              (creates .cache/bench with Beaker, Starlette and starsessions)
    BENCH_STRICT=1 make bench   (exits 1 when a target is missed; by default it only says so)
    python bench/bench.py   (without them: their rows are left out, and it says so)

Each contestant is a WSGI app called in-process the way a server would: build the
environ, call, iterate and close the body. Contestants run interleaved round by round
(A B C ... A B C ...), a batch of about 20 ms each, with gc disabled in the timed loop
and a warm-up first; the table shows the median cost per request (µs) with the bare
app's cost subtracted, and the min-max over rounds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from typing import Any, ClassVar
from urllib.parse import quote, unquote

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bunway_session as bs

try:
    from beaker.middleware import SessionMiddleware as BeakerMiddleware
except ImportError:
    BeakerMiddleware = None
try:
    import starlette
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import (
        SessionMiddleware as StarletteCookieSessions,
    )
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
except ImportError:
    starlette = None
try:
    import starsessions
except ImportError:
    starsessions = None

SECRET = "the bench secret, of more than thirty-two bytes"
DAY_MS = 86_400_000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
BATCH_SECONDS = 0.02

App = Callable[[dict[str, Any], Any], Iterable[bytes]]


# -- the apps behind the middleware -------------------------------------------------------

def make_app(get: Callable[[dict[str, Any]], Any], write: bool, save: Callable[[Any], None] | None = None) -> App:
    """W1/W3 increment a counter (write); W2 reads it. `get` fetches the session object."""
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        session = get(environ)
        if write:
            session["views"] = session.get("views", 0) + 1
            if save is not None:
                save(session)
        else:
            session.get("views")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    return app


def bare_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def beaker_session(environ: dict[str, Any]) -> Any:
    return environ["beaker.session"]


# -- the floor: only what the contract requires ---------------------------------------

class FloorMemory:
    def __init__(self) -> None:
        self.data: dict[str, list[Any]] = {}

    def get(self, sid: str) -> dict[str, Any] | None:
        entry = self.data.get(sid)
        if entry is None or entry[1] <= time.time() * 1000:
            return None
        return json.loads(entry[0])  # type: ignore[no-any-return]

    def set(self, sid: str, text: str, expires: int) -> None:
        self.data[sid] = [text, expires]

    def touch(self, sid: str, expires: int) -> None:
        entry = self.data.get(sid)
        if entry is not None:
            entry[1] = expires


class FloorFiles:
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def get(self, sid: str) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.folder, sid + ".json"), "rb") as file:
                return json.loads(file.read())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def set(self, sid: str, text: str, expires: int) -> None:
        path = os.path.join(self.folder, sid + ".json")
        temp = f"{path}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(text.encode())
        os.replace(temp, path)

    def touch(self, sid: str, expires: int) -> None:
        pass


class FloorMiddleware:
    """Cookie parse, HMAC-SHA256 verify with compare_digest, one load, change detection,
    one save, Set-Cookie only when due. Nothing else."""

    def __init__(self, app: App, store: Any) -> None:
        self.app, self.store, self.key = app, store, SECRET.encode()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        sid = None
        for part in environ.get("HTTP_COOKIE", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "connect.sid":
                value = unquote(value)
                if value.startswith("s:"):
                    candidate, _, signature = value[2:].rpartition(".")
                    mac = hmac.new(self.key, candidate.encode(), hashlib.sha256).digest()
                    if hmac.compare_digest(base64.b64encode(mac).decode().rstrip("="), signature):
                        sid = candidate
                break
        document = self.store.get(sid) if sid else None
        new = document is None
        if new:
            sid, data, original = secrets.token_urlsafe(24), {}, "{}"
        else:
            cookie = document.pop("cookie")
            data, original = document, json.dumps(document)
        environ["floor.session"] = data
        captured: list[Any] = []
        body = self.app(environ, lambda status, headers, exc_info=None: captured.append((status, headers)))
        expires = int(time.time() * 1000) + DAY_MS
        text = json.dumps(data)
        headers = list(captured[0][1])
        if new or text != original:
            cookie = {"originalMaxAge": DAY_MS, "expires": expires, "httpOnly": True, "path": "/", "sameSite": "lax"}
            self.store.set(sid, json.dumps({"cookie": cookie, **data}), expires)
            mac = hmac.new(self.key, sid.encode(), hashlib.sha256).digest()  # type: ignore[union-attr]
            value = quote(f"s:{sid}.{base64.b64encode(mac).decode().rstrip('=')}", safe="")
            headers.append(("Set-Cookie", (f"connect.sid={value}; Path=/; Expires="
                            f"{formatdate(expires / 1000, usegmt=True)}; HttpOnly; SameSite=Lax")))
        else:
            self.store.touch(sid, expires)
        start_response(captured[0][0], headers)
        return body


# -- timing ------------------------------------------------------------------------------

ENVIRON = {
    "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_HOST": "127.0.0.1:8000", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
    "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
}


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    start_response.headers = headers  # type: ignore[attr-defined]
    return lambda data: None


def call(app: App, cookie: str | None, path: str = "/") -> list[tuple[str, str]]:
    environ = dict(ENVIRON)
    environ["PATH_INFO"] = path
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    body = app(environ, start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return start_response.headers  # type: ignore[attr-defined,no-any-return]


def cookie_from(headers: list[tuple[str, str]], name: str) -> str:
    for header, value in headers:
        if header.lower() == "set-cookie" and value.strip().startswith(name + "="):
            return value.strip().split(";", 1)[0]
    raise RuntimeError(f"no {name} cookie in {headers}")


class Contestant:
    def __init__(self, name: str, app: App, cookie: str | None = None, path: str = "/", group: str = "") -> None:
        self.name, self.app, self.cookie, self.path, self.group = name, app, cookie, path, group
        self.batch = 1
        self.samples: list[float] = []

    def run(self, n: int) -> float:
        app, cookie, path = self.app, self.cookie, self.path
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(n):
                call(app, cookie, path)
            return time.perf_counter() - start
        finally:
            gc.enable()

    def calibrate(self) -> None:
        n = 1
        while True:
            took = self.run(n)
            if took > BATCH_SECONDS / 4 or n > 100_000:
                self.batch = max(1, int(n * BATCH_SECONDS / max(took, 1e-9)))
                return
            n *= 4


def returning(app: App, name: str = "connect.sid", path: str = "/") -> str:
    """A cookie for a session that exists: made by one request."""
    return cookie_from(call(app, None, path), name)


def measure(contestants: list[Contestant], rounds: int = ROUNDS) -> None:
    os.sync()  # start with the disk idle: earlier file work must not land in these timings
    for contestant in contestants:
        contestant.calibrate()
        contestant.run(contestant.batch)  # warm-up
    for _ in range(rounds):
        for contestant in contestants:
            contestant.samples.append(contestant.run(contestant.batch) / contestant.batch * 1e6)


def median(contestant: Contestant) -> float:
    return statistics.median(contestant.samples)


# -- the workloads ---------------------------------------------------------------------

def our_app(store: Any, write: bool, **options: Any) -> App:
    return bs.SessionMiddleware(make_app(lambda e: e["bunway.session"], write), secret=SECRET,
                                store=store, **options)


def floor_app(store: Any, write: bool) -> App:
    return FloorMiddleware(make_app(lambda e: e["floor.session"], write), store)


def beaker_app(kind: str, folder: str | None, write: bool) -> App | None:
    if BeakerMiddleware is None:
        return None
    config = {"session.type": kind, "session.timeout": DAY_MS // 1000, "session.httponly": True,
              "session.samesite": "Lax", "session.data_serializer": "json", "session.auto": False,
              "session.key": "beaker.session.id", "session.secret": SECRET}
    if folder:
        config.update({"session.data_dir": folder, "session.lock_dir": os.path.join(folder, "lock")})
    return BeakerMiddleware(make_app(beaker_session, write, save=lambda s: s.save()), config)  # type: ignore[no-any-return]


def workloads(folder: str) -> tuple[list[Contestant], dict[str, tuple[str, str, str]]]:
    """Every contestant, and for each workload row the names of (ours, floor, beaker).

    New visitors with files create a file per request, and the disk's writeback of
    thousands of new files disturbs whatever runs next: those rows run interleaved in a
    group of their own, with their own bare-app baseline.
    """
    contestants = [Contestant("bare", bare_app), Contestant("bare", bare_app, group="file W1")]
    rows: dict[str, tuple[str, str, str]] = {}

    def add(name: str, app: App | None, cookie: str | None, group: str = "") -> str:
        if app is not None:
            contestants.append(Contestant(name, app, cookie, group=group))
        return name

    for kind in ("memory", "file"):
        ours_folder = os.path.join(folder, "ours")
        floor_folder = os.path.join(folder, "floor")
        beaker_folder = os.path.join(folder, "beaker") if kind == "file" else None
        os.makedirs(floor_folder, exist_ok=True)
        store = bs.MemoryStore() if kind == "memory" else bs.FileStore(ours_folder)
        fstore = FloorMemory() if kind == "memory" else FloorFiles(floor_folder)
        w3, f3 = our_app(store, True, resave=False), floor_app(fstore, True)
        b2, b3 = beaker_app(kind, beaker_folder, False), beaker_app(kind, beaker_folder, True)
        our_cookie, floor_cookie = returning(w3), returning(f3)
        beaker_cookie = returning(b3, "beaker.session.id") if b3 else None
        w1_group = "file W1" if kind == "file" else ""
        rows[f"{kind} W1 new visitor"] = (
            add(f"ours {kind} W1", our_app(store, True, resave=False), None, w1_group),
            add(f"floor {kind} W1", floor_app(fstore, True), None, w1_group),
            add(f"beaker {kind} W1", beaker_app(kind, beaker_folder, True), None, w1_group))
        rows[f"{kind} W2 read, resave=False"] = (
            add(f"ours {kind} W2", our_app(store, False, resave=False), our_cookie),
            add(f"floor {kind} W2", floor_app(fstore, False), floor_cookie),
            add(f"beaker {kind} W2", b2, beaker_cookie))
        rows[f"{kind} W2 read, resave=True"] = (
            add(f"ours {kind} W2 resave", our_app(store, False, resave=True), our_cookie),
            f"floor {kind} W2", f"beaker {kind} W2")
        rows[f"{kind} W3 write"] = (
            add(f"ours {kind} W3", w3, our_cookie),
            add(f"floor {kind} W3", f3, floor_cookie),
            add(f"beaker {kind} W3", b3, beaker_cookie))
    return contestants, rows


def no_work_contestants() -> tuple[list[Contestant], Any]:
    """Requests that must cost (almost) nothing: outside the cookie path, or an unused
    session with save_uninitialized=False. The store counts its calls."""
    class CountingStore(bs.MemoryStore):
        calls = 0

        def get(self, sid: str) -> Any:
            CountingStore.calls += 1
            return super().get(sid)

        def set(self, sid: str, session: Any, max_age: Any = None) -> None:
            CountingStore.calls += 1
            super().set(sid, session, max_age)
    store = CountingStore()
    outside = bs.SessionMiddleware(bare_app, secret=SECRET, store=store, cookie={"path": "/app"})
    unused = bs.SessionMiddleware(bare_app, secret=SECRET, store=store, save_uninitialized=False)
    return [Contestant("bare", bare_app), Contestant("outside the cookie path", outside),
            Contestant("unused, save_uninitialized=False", unused)], CountingStore


def compare_stores(stores: dict[str, Any], rounds: int) -> dict[str, tuple[float, float]]:
    """W2 and W3 against each of a few stores, interleaved in one group: for each workload,
    the cost with each store (in the dict's order)."""
    contestants = [Contestant("bare", bare_app)]
    for label, store in stores.items():
        w3 = our_app(store, True, resave=False)
        cookie = returning(w3)
        contestants += [Contestant(f"{label} W2", our_app(store, False, resave=False), cookie),
                        Contestant(f"{label} W3", w3, cookie)]
    measure(contestants, rounds)
    bare = median(contestants[0])
    cost = {c.name: median(c) - bare for c in contestants[1:]}
    first, second = stores
    return {workload: (cost[f"{first} {workload}"], cost[f"{second} {workload}"]) for workload in ("W2", "W3")}


def scale_rows(folder: str) -> list[tuple[str, float, float]]:
    """W2 and W3 with 1,000 and with 100,000 other sessions in the store."""
    document = {"cookie": {"originalMaxAge": DAY_MS, "expires": bs._iso_ms(int(time.time() * 1000) + DAY_MS),
                           "secure": False, "httpOnly": True, "path": "/", "sameSite": "lax"}, "views": 1}
    results = []
    for kind in ("memory", "file"):
        stores = {}
        for count in (1_000, 100_000):
            store = bs.MemoryStore() if kind == "memory" else bs.FileStore(os.path.join(folder, f"scale{count}"))
            for i in range(count):
                store.set(f"filler{i:06d}", document)
            stores[str(count)] = store
        for workload, (small, large) in compare_stores(stores, max(7, ROUNDS // 2)).items():
            results.append((f"{kind} {workload}", small, large))
    return results


class WholeDocumentStore:
    """A store as express-session's stores are: get/set/destroy/touch, no update, so every
    save writes the whole document (the behaviour before the concurrency guarantees)."""

    def __init__(self, inner: Any) -> None:
        self.get, self.set, self.destroy, self.touch = inner.get, inner.set, inner.destroy, inner.touch


def concurrency_rows(folder: str) -> list[tuple[str, float, float]]:
    """W2 and W3 with key-by-key, existence-checked saves (update) and with whole-document saves."""
    results = []
    for kind in ("memory", "file"):
        safe = bs.MemoryStore() if kind == "memory" else bs.FileStore(os.path.join(folder, "safe"))
        whole = WholeDocumentStore(bs.MemoryStore() if kind == "memory"
                                   else bs.FileStore(os.path.join(folder, "whole")))
        for workload, (update, whole_cost) in compare_stores({"update": safe, "whole": whole},
                                                             max(7, ROUNDS // 2)).items():
            results.append((f"{kind} {workload}", update, whole_cost))
    return results


def memory_per_session() -> float:
    store = bs.MemoryStore()
    app = our_app(store, True, resave=False)
    call(app, None)  # warm caches, shapes
    count = 20_000
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(count):
        call(app, None)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / count


# -- ASGI: a Starlette app, in-process ------------------------------------------------------

def asgi_scope(cookie: str | None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000")]
    if cookie:
        headers.append((b"cookie", cookie.encode("latin-1")))
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/", "root_path": "",
            "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000)}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class ASGICall:
    """A server's send: keeps the last response's headers."""

    headers: ClassVar[list[tuple[bytes, bytes]]] = []

    @staticmethod
    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            ASGICall.headers = message["headers"]


async def call_asgi(app: Any, cookie: str | None) -> list[tuple[bytes, bytes]]:
    """One request, as a server makes it: a new scope, receive, send."""
    await app(asgi_scope(cookie), receive, ASGICall.send)
    return ASGICall.headers


def starlette_app(write: bool | None, middleware: list[Any]) -> Any:
    """W1/W3 increment a counter in request.session, W2 reads it; None: the bare app."""
    async def endpoint(request: Any) -> Any:
        if write is True:
            request.session["views"] = request.session.get("views", 0) + 1
        elif write is False:
            request.session.get("views")
        return PlainTextResponse("ok")
    return Starlette(routes=[Route("/", endpoint)], middleware=middleware)


class ASGIContestant(Contestant):
    async def arun(self, n: int) -> float:
        app, cookie = self.app, self.cookie
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(n):
                await app(asgi_scope(cookie), receive, ASGICall.send)
            return time.perf_counter() - start
        finally:
            gc.enable()


async def measure_asgi(contestants: list[ASGIContestant], rounds: int = ROUNDS) -> None:
    os.sync()
    for contestant in contestants:
        n = 1
        while True:
            took = await contestant.arun(n)
            if took > BATCH_SECONDS / 4 or n > 100_000:
                contestant.batch = max(1, int(n * BATCH_SECONDS / max(took, 1e-9)))
                break
            n *= 4
        await contestant.arun(contestant.batch)
    for _ in range(rounds):
        for contestant in contestants:
            contestant.samples.append(await contestant.arun(contestant.batch) / contestant.batch * 1e6)


async def asgi_cookie(app: Any, name: str) -> str:
    for header, value in await call_asgi(app, None):
        if header == b"set-cookie" and value.startswith(name.encode() + b"="):
            return value.decode("latin-1").split(";", 1)[0]
    raise RuntimeError(f"no {name} cookie")


ASGI_STORES = ("memory", "file")


class FloorASGISession(dict):  # type: ignore[type-arg]
    pass


class FloorASGI:
    """The ASGI floor: a minimal correct session middleware, and nothing more. Cookie parse,
    unquote, HMAC-SHA256 verified with hmac.new and compare_digest; a dict store sid -> (JSON,
    expiry ms) with an expiry check and json.loads; a dict session in scope["session"] and its
    JSON at load; the start message held until the first body; then a new session with data
    gets an ID, a store write and a signed Set-Cookie with Expires, a changed one is written
    again with a Set-Cookie, an unchanged one has its expiry moved. No options, no validation,
    no locking (and naive: a new HMAC object a request, json.dumps twice)."""

    def __init__(self, app: Any, data: dict[str, tuple[str, int]]) -> None:
        self.app, self.key = app, SECRET.encode()
        self.data = data  # the store: one dict shared by the W1-W3 apps, as the others share theirs

    def sign(self, value: str) -> str:
        return base64.b64encode(hmac.new(self.key, value.encode(), hashlib.sha256).digest()).decode().rstrip("=")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sid = None
        for name, value in scope["headers"]:
            if name == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    cookie_name, _, cookie_value = part.strip().partition("=")
                    if cookie_name == "connect.sid":
                        cookie_value = unquote(cookie_value)
                        if cookie_value.startswith("s:"):
                            candidate, _, signature = cookie_value[2:].rpartition(".")
                            if hmac.compare_digest(self.sign(candidate), signature):
                                sid = candidate
                        break
        entry = self.data.get(sid) if sid else None
        if entry is not None and entry[1] <= time.time() * 1000:
            entry = None
        if entry is None:
            sid, session, original = None, FloorASGISession(), "{}"
        else:
            session = FloorASGISession(json.loads(entry[0]))
            original = json.dumps(session)
        scope = dict(scope)
        scope["session"] = session
        held: list[Any] = []

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal sid
            if message["type"] == "http.response.start":
                held.append(message)
                return
            if held:
                start = held.pop()
                text = json.dumps(session)
                expires = int(time.time() * 1000) + DAY_MS
                headers = list(start.get("headers", []))
                if (sid is None and session) or (sid is not None and text != original):
                    if sid is None:
                        sid = secrets.token_urlsafe(24)
                    self.data[sid] = (text, expires)
                    value = quote(f"s:{sid}.{self.sign(sid)}", safe="")
                    headers.append((b"set-cookie", (f"connect.sid={value}; Path=/; Expires="
                                                    f"{formatdate(expires / 1000, usegmt=True)}; HttpOnly; "
                                                    "SameSite=Lax").encode("latin-1")))
                elif sid is not None:
                    self.data[sid] = (self.data[sid][0], expires)
                await send({**start, "headers": headers})
            await send(message)
        await self.app(scope, receive, send_wrapper)


async def asgi_memory_rows(rounds: int) -> dict[str, dict[str, float]]:
    """W1-W3 with a memory store: ours, the ASGI floor, Starlette's cookie middleware and
    starsessions, interleaved round by round (resave=False, save_uninitialized=False)."""
    kinds: dict[str, list[Any]] = {
        "ours": [Middleware(bs.ASGISessionMiddleware, secret=SECRET, store=bs.MemoryStore(), resave=False,
                            save_uninitialized=False)],
        "floor": [Middleware(FloorASGI, data={})],
        "starlette cookie": [Middleware(StarletteCookieSessions, secret_key=SECRET)]}
    if starsessions is not None:
        kinds["starsessions"] = [Middleware(starsessions.SessionMiddleware, store=starsessions.InMemoryStore(),
                                            lifetime=DAY_MS // 1000, cookie_https_only=False),
                                 Middleware(starsessions.SessionAutoloadMiddleware)]
    bare = ASGIContestant("bare", starlette_app(None, []))
    contestants: list[ASGIContestant] = [bare]
    for label, middleware in kinds.items():
        w3 = starlette_app(True, middleware)
        cookie = await asgi_cookie(w3, "connect.sid" if label in ("ours", "floor") else "session")
        contestants += [ASGIContestant(f"{label} W1", starlette_app(True, middleware)),
                        ASGIContestant(f"{label} W2", starlette_app(False, middleware), cookie),
                        ASGIContestant(f"{label} W3", w3, cookie)]
    await measure_asgi(contestants, rounds)
    base = median(bare)
    cost = {c.name: median(c) - base for c in contestants[1:]}
    return {w: {label: cost[f"{label} {w}"] for label in kinds} for w in ("W1", "W2", "W3")}


def report_asgi_memory(misses: list[str]) -> None:
    if starlette is None:
        return
    table = asyncio.run(asgi_memory_rows(max(ROUNDS, 21)))
    labels = list(next(iter(table.values())))
    print(f"\nASGI, memory (a Starlette {starlette.__version__} app; resave=False, save_uninitialized=False): "
          "µs per request over the bare app, medians of interleaved rounds")
    print(f"{'workload':<10}" + "".join(f"{label:>18}" for label in labels) + f"{'ours/floor':>12}"
          + "".join(f"{label + '/ours':>22}" for label in labels[2:]))
    for workload, costs in table.items():
        ours = costs["ours"]
        print(f"{workload:<10}" + "".join(f"{costs[label]:18.1f}" for label in labels) + f"{ours / costs['floor']:12.2f}"
              + "".join(f"{costs[label] / ours:22.2f}" for label in labels[2:]))
        if ours > 1.15 * costs["floor"]:
            misses.append(f"ASGI {workload}: {ours / costs['floor']:.2f}x the ASGI floor (target 1.15)")
        for rival in labels[2:]:
            if ours >= costs[rival]:
                misses.append(f"ASGI {workload}: not faster than {rival} ({ours:.1f} vs {costs[rival]:.1f} µs)")


@contextlib.contextmanager
def private_postgres(folder: str) -> Iterator[str | None]:
    """BUNWAY_PG_DSN, or a private cluster in `folder` (.ci/postgres); None without PostgreSQL
    or psycopg (the SQL rows then have SQLite only)."""
    try:
        import psycopg_pool  # noqa: F401
    except ImportError:
        yield None
        return
    if os.environ.get("BUNWAY_PG_DSN"):
        yield os.environ["BUNWAY_PG_DSN"]
        return
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".ci", "postgres")
    cluster = os.path.join(folder, "pg")
    os.chmod(folder, 0o755)
    done = subprocess.run([script, "start", cluster], capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        yield None
        return
    try:
        yield done.stdout.strip()
    finally:
        subprocess.run([script, "stop", cluster], capture_output=True, timeout=120, check=False)


class CountingPool:
    """A psycopg pool that counts round trips: each statement, and the BEGIN and COMMIT of a
    transaction (explicit, or implicit outside autocommit)."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.trips = pool, 0

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        with self.pool.connection() as connection:
            yield CountingConnection(connection, self)


class CountingConnection:
    def __init__(self, connection: Any, pool: CountingPool) -> None:
        self.connection, self.pool, self.explicit, self.implicit = connection, pool, False, False

    @property
    def autocommit(self) -> bool:
        return bool(self.connection.autocommit)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self.connection.autocommit = value

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.explicit = True
        self.pool.trips += 2
        with self.connection.transaction():
            yield
        self.explicit = False

    def execute(self, sql: str, parameters: Any = ()) -> Any:
        if not self.connection.autocommit and not self.explicit and not self.implicit:
            self.implicit = True
            self.pool.trips += 2
        self.pool.trips += 1
        return self.connection.execute(sql, parameters)


def user_stores(folder: str, redis_socket: str | None, dsn: str | None) -> Iterator[tuple[str, Any, Callable[[int], None]]]:
    """Each store with user_key, and how to fill it fast with sessions of other users."""
    expires = int(time.time() * 1000) + DAY_MS
    text = bs._dumps({"cookie": {"originalMaxAge": DAY_MS, "expires": bs._iso_ms(expires), "httpOnly": True,
                                 "path": "/"}})[:-1]

    def others(n: int) -> str:
        return f'{text},"_user_id":"user{n}"}}'
    memory = bs.MemoryStore(user_key="_user_id")
    yield "memory", memory, lambda count: [memory.set(f"other{n}", json.loads(others(n))) for n in range(count)]
    files = os.path.join(folder, "users-file")
    store = bs.FileStore(files, user_key="_user_id")

    def fill_files(count: int) -> None:
        for n in range(count):
            with open(os.path.join(files, f"other{n}.json"), "w", encoding="utf-8") as file:
                file.write(others(n)[:-1] + f',"__lastAccess":{int(time.time() * 1000)}}}')
            store._mark(f"other{n}", f'"user{n}"')
    yield "file", store, fill_files
    sqlite = bs.SQLiteStore(os.path.join(folder, "users.sqlite3"), user_key="_user_id")

    def fill_sqlite(count: int) -> None:
        with sqlite._connection() as connection:
            connection.execute("BEGIN")
            connection.executemany("INSERT INTO sessions (sid, expired, sess) VALUES (?, ?, ?)",
                                   ((f"other{n}", expires, others(n)) for n in range(count)))
            connection.execute("COMMIT")
    yield "sqlite", sqlite, fill_sqlite
    if redis_socket is not None:
        import redis
        client = redis.Redis(unix_socket_path=redis_socket)
        redis_store = bs.RedisStore(client, prefix="users:", user_key="_user_id")

        def fill_redis(count: int) -> None:
            with client.pipeline(transaction=False) as pipe:
                for n in range(count):
                    pipe.set(f"users:other{n}", others(n), ex=DAY_MS // 1000)
                    pipe.sadd(f'bunway-users:users:"user{n}"', f"other{n}")
                pipe.execute()
        yield "redis", redis_store, fill_redis
    if dsn is not None:
        from psycopg_pool import ConnectionPool
        pool = ConnectionPool(dsn, min_size=1, max_size=2, open=True)
        table = "users_" + secrets.token_hex(4)
        pg = bs.PostgresStore(pool, table=table, create_table=True, user_key="_user_id")

        def fill_pg(count: int) -> None:
            with pool.connection() as connection:
                connection.execute(f'INSERT INTO "{table}" (sid, sess, expire) SELECT \'other\' || n, '
                                   f"(%s || ',\"_user_id\":\"user' || n || '\"}}')::json, to_timestamp(%s) "
                                   f"FROM generate_series(0, %s - 1) AS n", (text, expires // 1000, count))
                connection.execute(f'ANALYZE "{table}"')
        yield "postgres", pg, fill_pg
        with pool.connection() as connection:
            connection.execute(f'DROP TABLE "{table}"')
        pool.close()


def report_users(folder: str, redis_socket: str | None, dsn: str | None) -> None:
    """sessions_of and destroy_sessions_of for a user with 3 sessions among 100,000 others."""
    print("\nA user's sessions: µs for a user with 3 sessions, 100,000 other sessions in the store (medians)")
    print(f"{'store':<10}{'sessions_of':>14}{'destroy_sessions_of':>22}")
    document = {"cookie": {"originalMaxAge": DAY_MS, "expires": bs._iso_ms(int(time.time() * 1000) + DAY_MS),
                           "httpOnly": True, "path": "/"}, "_user_id": "alice"}
    for label, store, fill in user_stores(folder, redis_socket, dsn):
        fill(100_000)
        listing, ending = [], []
        for _ in range(max(5, ROUNDS)):
            for n in range(3):
                store.set(f"alice{n}", dict(document))
            start = time.perf_counter()
            found = store.sessions_of("alice")
            listing.append(time.perf_counter() - start)
            start = time.perf_counter()
            ended = store.destroy_sessions_of("alice")
            ending.append(time.perf_counter() - start)
            assert (len(found), ended) == (3, 3), (label, len(found), ended)
        print(f"{label:<10}{statistics.median(listing) * 1e6:14.1f}{statistics.median(ending) * 1e6:22.1f}")


def report_sql(folder: str, dsn: str | None) -> None:
    """W1-W3 through SessionMiddleware with SQLiteStore and PostgresStore, beside FileStore,
    interleaved; and the statements (SQLite) or round trips (PostgreSQL) a request costs."""
    stores: dict[str, Any] = {"file": bs.FileStore(os.path.join(folder, "sql-file")),
                              "sqlite": bs.SQLiteStore(os.path.join(folder, "bench.sqlite3"))}
    pool = None
    if dsn is not None:
        from psycopg_pool import ConnectionPool
        pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True)
        stores["postgres"] = bs.PostgresStore(pool, table="bench_" + secrets.token_hex(4), create_table=True)
    contestants = [Contestant("bare", bare_app)]
    for label, store in stores.items():
        w3 = our_app(store, True, resave=False)
        cookie = returning(w3)
        contestants += [Contestant(f"{label} W1", our_app(store, True, resave=False)),
                        Contestant(f"{label} W2", our_app(store, False, resave=False), cookie),
                        Contestant(f"{label} W3", w3, cookie)]
    measure(contestants, max(7, ROUNDS // 2))
    bare = median(contestants[0])
    cost = {c.name: median(c) - bare for c in contestants[1:]}
    print("\nSQL stores (WSGI, resave=False): µs per request over the bare app, and what a request sends")
    print(f"{'workload':<10}" + "".join(f"{label:>12}" for label in stores) + "   sqlite statements, postgres round trips")
    for workload in ("W1", "W2", "W3"):
        counts = sql_trips(stores, workload)
        print(f"{workload:<10}" + "".join(f"{cost[f'{label} {workload}']:12.1f}" for label in stores) + f"   {counts}")
    if pool is not None:
        with pool.connection() as connection:
            connection.execute(f'DROP TABLE {stores["postgres"]._quoted}')
        pool.close()


def sql_trips(stores: dict[str, Any], workload: str) -> str:
    """What one request of the workload sends to each SQL store."""
    found = []
    sqlite = stores["sqlite"]
    statements: list[str] = []
    with sqlite._connection() as connection:
        connection.set_trace_callback(statements.append)
    run_workload(sqlite, workload, statements.clear)
    with sqlite._connection() as connection:
        connection.set_trace_callback(None)
    found.append(f"sqlite {len(statements)} ({', '.join(s.split()[0] for s in statements)})")
    if "postgres" in stores:
        store = stores["postgres"]
        counting = CountingPool(store.pool)
        store.pool = counting

        def reset() -> None:
            counting.trips = 0
        run_workload(store, workload, reset)
        store.pool = counting.pool
        found.append(f"postgres {counting.trips}")
    return ", ".join(found)


def run_workload(store: Any, workload: str, before: Callable[[], None]) -> None:
    """One request of the workload on a session made beforehand; `before` resets the count."""
    app = our_app(store, workload != "W2", resave=False)
    cookie = returning(our_app(store, True, resave=False)) if workload != "W1" else None
    before()
    call(app, cookie)


@contextlib.contextmanager
def private_redis(folder: str) -> Iterator[str | None]:
    """A redis-server on a unix socket in `folder` (its path), or None without redis-server or redis-py."""
    binary = shutil.which("redis-server")
    try:
        import redis
    except ImportError:
        redis = None
    if binary is None or redis is None:
        yield None
        return
    path = os.path.join(folder, "redis.sock")
    process = subprocess.Popen([binary, "--port", "0", "--unixsocket", path, "--save", "", "--appendonly", "no",
                                "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(unix_socket_path=path).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield path
    finally:
        process.terminate()
        process.wait(10)


class MemoryStoreOnThreads(bs.MemoryStore):
    """A MemoryStore called as any store that may block is: on a worker thread. Beside the
    inline MemoryStore it shows what a hop to a thread and back costs."""

    blocking = True


async def asgi_rows(folder: str, redis_socket: str | None,
                    dsn: str | None = None) -> tuple[dict[str, dict[str, float]], list[str]]:
    """For each workload, the cost (µs over the bare Starlette app) of each contestant."""
    bare = ASGIContestant("bare", starlette_app(None, []))
    contestants: list[ASGIContestant] = [bare]
    kinds: dict[str, Any] = {}
    stores: dict[str, Any] = {kind: bs.MemoryStore() if kind == "memory" else
                              bs.FileStore(os.path.join(folder, "asgi-" + kind)) for kind in ASGI_STORES}
    stores["memory, thread"] = MemoryStoreOnThreads()
    if redis_socket is not None:
        import redis
        import redis.asyncio
        stores["redis, thread"] = bs.RedisStore(redis.Redis(unix_socket_path=redis_socket), prefix="bench:")
        stores["async redis"] = bs.AsyncRedisStore(redis.asyncio.Redis(unix_socket_path=redis_socket),
                                                   prefix="abench:")
    stores["sqlite, thread"] = bs.SQLiteStore(os.path.join(folder, "asgi.sqlite3"))
    if dsn is not None:
        from psycopg_pool import AsyncConnectionPool, ConnectionPool
        table = "abench_" + secrets.token_hex(4)
        stores["postgres, thread"] = bs.PostgresStore(ConnectionPool(dsn, min_size=1, max_size=8, open=True),
                                                      table=table, create_table=True)
        async_pool = AsyncConnectionPool(dsn, min_size=1, max_size=8, open=False)
        await async_pool.open()
        stores["async postgres"] = bs.AsyncPostgresStore(async_pool, table=table)
    for kind, store in stores.items():
        kinds[f"ours ({kind})"] = [Middleware(bs.ASGISessionMiddleware, secret=SECRET, store=store, resave=False)]
    kinds["starlette cookie"] = [Middleware(StarletteCookieSessions, secret_key=SECRET)]
    if starsessions is not None:
        kinds["starsessions"] = [Middleware(starsessions.SessionMiddleware, store=starsessions.InMemoryStore(),
                                            lifetime=DAY_MS // 1000, cookie_https_only=False),
                                 Middleware(starsessions.SessionAutoloadMiddleware)]
    for label, middleware in kinds.items():
        w3 = starlette_app(True, middleware)
        cookie = await asgi_cookie(w3, "connect.sid" if label.startswith("ours") else "session")
        contestants += [ASGIContestant(f"{label} W1", starlette_app(True, middleware)),
                        ASGIContestant(f"{label} W2", starlette_app(False, middleware), cookie),
                        ASGIContestant(f"{label} W3", w3, cookie)]
    await measure_asgi(contestants)
    base = median(bare)
    cost = {c.name: median(c) - base for c in contestants[1:]}
    return {w: {label: cost[f"{label} {w}"] for label in kinds} for w in ("W1", "W2", "W3")}, list(kinds)


def report_asgi(folder: str, misses: list[str]) -> None:
    if starlette is None:
        print("\nASGI: Starlette is not installed: no ASGI rows (make bench installs it in .cache/bench)")
        return
    with private_redis(folder) as redis_socket, private_postgres(folder) as dsn:
        table, labels = asyncio.run(asgi_rows(folder, redis_socket, dsn))
        if dsn is None:
            print("\nPostgreSQL or psycopg is missing: no PostgreSQL rows")
        report_sql(folder, dsn)
        report_users(folder, redis_socket, dsn)
    if "ours (async redis)" not in labels:
        print("\nASGI: redis-server or redis-py is missing: no Redis rows")
    print(f"\nASGI: a Starlette {starlette.__version__} app in-process, µs per request over the bare app"
          + ("" if starsessions is None else f"; starsessions {starsessions_version()}"))
    print(f"{'workload':<10}" + "".join(f"{label:>21}" for label in labels)
          + f"{'starlette/ours':>16}" + (f"{'starsessions/ours':>19}" if "starsessions" in labels else ""))
    for workload, costs in table.items():
        ours = costs["ours (memory)"]
        line = f"{workload:<10}" + "".join(f"{costs[label]:21.1f}" for label in labels)
        line += f"{costs['starlette cookie'] / ours:16.2f}"
        if "starsessions" in costs:
            line += f"{costs['starsessions'] / ours:19.2f}"
        print(line)
        if "ours (async redis)" in costs and workload != "W1" \
                and costs["ours (async redis)"] >= costs["ours (redis, thread)"]:
            misses.append(f"ASGI {workload}: AsyncRedisStore not faster than RedisStore on a thread")
    hops = {w: costs["ours (memory, thread)"] - costs["ours (memory)"] for w, costs in table.items()}
    print("FileStore reads inline and writes on a worker thread: "
          + ", ".join(f"{w} {costs['ours (file)']:.1f}" for w, costs in table.items())
          + " µs; the thread hops that a store on worker threads pays (MemoryStore on threads minus inline): "
          + ", ".join(f"{w} {hop:.1f}" for w, hop in hops.items()) + " µs")


def starsessions_version() -> str:
    from importlib.metadata import version
    return version("starsessions")


# -- report ----------------------------------------------------------------------------

def main() -> int:
    folder = tempfile.mkdtemp(prefix="bunway-bench-")
    try:
        return report(folder)
    finally:
        shutil.rmtree(folder, True)
        os.sync()  # let the disk finish deleting here, not in the next run's timings


def report(folder: str) -> int:
    print(f"bunway_session bench: Python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} cores; {ROUNDS} interleaved rounds, medians of µs per request over the bare app")
    if BeakerMiddleware is None:
        print("Beaker is not installed: its rows are left out (make bench installs it in bench/.venv)")
    contestants, rows = workloads(folder)
    groups = sorted({c.group for c in contestants})
    for group in groups:
        measure([c for c in contestants if c.group == group])
    bare = {c.group: median(c) for c in contestants if c.name == "bare"}
    by_name = {c.name: c for c in contestants if c.name != "bare"}
    misses: list[str] = []

    def cost(name: str) -> float | None:
        contestant = by_name.get(name)
        return None if contestant is None else median(contestant) - bare[contestant.group]

    def spread(name: str) -> str:
        contestant = by_name.get(name)
        if contestant is None:
            return "-"
        base = bare[contestant.group]
        return f"{min(contestant.samples) - base:.1f}-{max(contestant.samples) - base:.1f}"

    print(f"\nbare app: {bare[''] :.2f} µs per request (subtracted below)\n")
    print(f"{'workload':<28} {'ours':>7} {'min-max':>11} {'floor':>7} {'beaker':>8} "
          f"{'ours/floor':>10} {'beaker/ours':>11}")
    for row, (mine, floor, beaker) in rows.items():
        ours_cost, floor_cost, beaker_cost = cost(mine), cost(floor), cost(beaker)
        assert ours_cost is not None and floor_cost is not None
        to_floor = ours_cost / floor_cost
        to_beaker = (beaker_cost / ours_cost) if beaker_cost is not None else None
        print(f"{row:<28} {ours_cost:7.1f} {spread(mine):>11} {floor_cost:7.1f} "
              f"{'-' if beaker_cost is None else f'{beaker_cost:8.1f}':>8} {to_floor:10.2f} "
              f"{'-' if to_beaker is None else f'{to_beaker:11.2f}':>11}")
        floor_target = 1.10 if row.startswith("memory") else 1.25
        if to_floor > floor_target:
            misses.append(f"{row}: {to_floor:.2f}x the floor (target {floor_target})")
        if to_beaker is not None:
            target = 5.0 if row.startswith("file W2") else None if row.startswith("file") else (
                1.7 if "W3" in row else 2.0)
            if target is not None and to_beaker < target:
                misses.append(f"{row}: {to_beaker:.2f}x faster than Beaker (target {target})")

    no_work, counting = no_work_contestants()
    measure(no_work)
    base = median(no_work[0])
    print("\nno work where none is needed (µs over the bare app; store calls):")
    for contestant in no_work[1:]:
        overhead = median(contestant) - base
        print(f"  {contestant.name:<36} {overhead:5.2f} µs")
        if overhead >= 2.0:
            misses.append(f"{contestant.name}: {overhead:.2f} µs over the bare app (target < 2)")
    print(f"  store calls made: {counting.calls}")
    if counting.calls:
        misses.append(f"no-work requests made {counting.calls} store calls (target 0)")

    print("\nscale: µs per request with 1,000 and with 100,000 other sessions in the store")
    for name, small, large in scale_rows(folder):
        ratio = large / small
        print(f"  {name:<10} {small:7.1f} {large:7.1f}   100k/1k {ratio:.2f}")
        if ratio > 1.15:
            misses.append(f"scale {name}: 100k/1k = {ratio:.2f} (target 1.15)")

    print("\nconcurrency guarantees: µs per request with key-by-key saves (update) and with "
          "whole-document saves (express-session's stores)")
    for name, update, whole in concurrency_rows(folder):
        print(f"  {name:<10} {update:7.1f} {whole:7.1f}   update/whole {update / whole:.2f}")

    report_asgi_memory(misses)
    report_asgi(folder, misses)

    per_session = memory_per_session()
    print(f"\nMemoryStore: {per_session:.0f} bytes per small session (tracemalloc, 20,000 sessions)")
    if per_session > 400:
        misses.append(f"MemoryStore: {per_session:.0f} bytes per session (target 400)")

    print()
    if misses:
        print("summary: MISSED " + "; ".join(misses))
        # A noisy machine is not a failure for a user; BENCH_STRICT=1 makes a miss one.
        return 1 if os.environ.get("BENCH_STRICT") == "1" else 0
    print("summary: every target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
