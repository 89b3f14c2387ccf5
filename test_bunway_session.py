"""Tests for bunway_session, one TestCase a section of the contract (SPEC.md).

Run: python -m unittest            (Redis tests run when redis-server and redis-py exist,
                                    or REDIS_URL is set; otherwise they are skipped, or fail
                                    under BUNWAY_REQUIRE_ALL=1, as in CI)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import http
import http.client
import http.cookiejar
import importlib
import inspect
import io
import json
import logging
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
import unittest
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, NoReturn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import FileWrapper, setup_testing_defaults
from wsgiref.validate import validator

if TYPE_CHECKING:
    from typing import Self

import bunway_session as bs
from bunway_session import (
    ASGISessionMiddleware,
    FileStore,
    MemoryStore,
    RedisStore,
    Session,
    SessionCookie,
    SessionMiddleware,
    get_session,
    sign,
    unsign,
)

# Optional components (redis-server and redis-py; later uvicorn, starlette…): their tests are
# skipped without them, and fail instead under BUNWAY_REQUIRE_ALL=1, as CI runs the suite.
REQUIRE_ALL = os.environ.get("BUNWAY_REQUIRE_ALL") == "1"


def unavailable(reason: str) -> NoReturn:
    if REQUIRE_ALL:
        raise AssertionError(f"BUNWAY_REQUIRE_ALL=1, but {reason}")
    raise unittest.SkipTest(reason)


LONG_SECRET = "a test secret that is longer than thirty-two bytes"
SECRET = "keyboard cat"   # express-session's own example (pinned fixtures use it): short, so warned about
# Warnings about likely mistakes (such as that secret) are checked with assertLogs; elsewhere
# they are not printed.
logging.getLogger("bunway_session").addHandler(logging.NullHandler())
UTC = timezone(timedelta(0))  # datetime.UTC is Python 3.11+
T0 = 1_795_725_516.873   # 2026-11-26T20:38:36.873Z, the moment of the express-session probe below


class Clock:
    """An injected clock: seconds since the epoch, moved by hand."""

    def __init__(self, start: float = T0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, ms: float) -> None:
        self.t += ms / 1000


class Response:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def code(self) -> int:
        return int(self.status.split()[0])

    def set_cookies(self) -> list[str]:
        return [value for name, value in self.headers if name.lower() == "set-cookie"]

    def session_cookie(self, name: str = "connect.sid") -> str | None:
        for value in self.set_cookies():
            if value.startswith(name + "="):
                return value
        return None


class Client:
    """A tiny WSGI client: builds an environ, keeps a cookie jar, runs the app through
    wsgiref.validate (so every test also checks PEP 3333), iterates and closes the body."""

    def __init__(self, app: Any, validate: bool = True) -> None:
        self.app = validator(app) if validate else app
        self.cookies: dict[str, str] = {}

    def request(self, path: str = "/", method: str = "GET", cookie: str | None = None,
                environ: dict[str, Any] | None = None, https: bool = False,
                headers: dict[str, str] | None = None) -> Response:
        env: dict[str, Any] = {}
        setup_testing_defaults(env)
        env["PATH_INFO"], env["REQUEST_METHOD"], env["QUERY_STRING"] = path, method, ""
        if https:
            env["wsgi.url_scheme"] = "https"
        if cookie is None and self.cookies:
            cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if cookie is not None:
            env["HTTP_COOKIE"] = cookie
        for name, value in (headers or {}).items():
            env["HTTP_" + name.upper().replace("-", "_")] = value
        env.update(environ or {})
        captured: dict[str, Any] = {}
        written: list[bytes] = []

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if exc_info is not None and "status" in captured:
                raise exc_info[1].with_traceback(exc_info[2])
            captured["status"], captured["headers"] = status, response_headers
            return written.append

        body = self.app(env, start_response)
        try:
            written.extend(body)
        finally:
            close = getattr(body, "close", None)
            if close:
                close()
        response = Response(captured["status"], captured["headers"], b"".join(written))
        remember_cookies(self.cookies, response)
        return response


def remember_cookies(jar: dict[str, str], response: Response) -> None:
    """What a browser does with the response's Set-Cookie headers."""
    for header in response.set_cookies():
        pair = header.split(";", 1)[0]
        name, value = pair.split("=", 1)
        if "Expires=Thu, 01 Jan 1970" in header:
            jar.pop(name, None)
        else:
            jar[name] = value


def http_scope(path: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
               https: bool = False, **extra: Any) -> dict[str, Any]:
    """An ASGI HTTP scope as uvicorn makes one."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "https" if https else "http", "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": b"", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver")] + [(name.lower().encode("latin-1"), value.encode("latin-1"))
                                                  for name, value in (headers or {}).items()]}
    scope.update(extra)
    return scope


class ASGIClient:
    """Client's twin for ASGI apps: request() runs one request on a new event loop, arequest()
    on the running one; `messages` holds what the app sent in the last request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cookies: dict[str, str] = {}
        self.messages: list[dict[str, Any]] = []

    def request(self, path: str = "/", method: str = "GET", cookie: str | None = None,
                scope: dict[str, Any] | None = None, https: bool = False,
                headers: dict[str, str] | None = None) -> Response:
        return asyncio.run(self.arequest(path, method, cookie, scope, https, headers))

    async def arequest(self, path: str = "/", method: str = "GET", cookie: str | None = None,
                       scope: dict[str, Any] | None = None, https: bool = False,
                       headers: dict[str, str] | None = None) -> Response:
        headers = dict(headers or {})
        if cookie is None and self.cookies:
            cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if cookie is not None:
            headers["Cookie"] = cookie
        full_scope = http_scope(path, method, headers, https, **(scope or {}))
        self.messages = messages = []
        requested = False
        complete = asyncio.Event()

        async def receive() -> dict[str, Any]:
            # As uvicorn does: the request, then "disconnect" once the response is complete.
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            try:
                await asyncio.wait_for(complete.wait(), 30)
            except asyncio.TimeoutError:
                pass
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)
            if bs._ends_body(message):
                complete.set()
        await self.app(full_scope, receive, send)
        response = response_of(messages)
        remember_cookies(self.cookies, response)
        return response


def response_of(messages: list[dict[str, Any]]) -> Response:
    """The Response an ASGI app's messages make (headers decoded as latin-1, as servers do)."""
    starts = [m for m in messages if m["type"] == "http.response.start"]
    if len(starts) != 1:
        raise AssertionError(f"expected one http.response.start, got {messages!r}")
    status = starts[0]["status"]
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in starts[0].get("headers", [])]
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return Response(f"{status} {http.HTTPStatus(status).phrase}", headers, body)


class AsyncTestCase(unittest.IsolatedAsyncioTestCase):
    """An async test on its own event loop. (The loop runs in debug mode; on a slow, shared
    machine its notes about callbacks over 100 ms are noise, not findings.)"""

    async def asyncSetUp(self) -> None:
        asyncio.get_running_loop().slow_callback_duration = 10


def asgi_text_app(handler: Callable[[Session, dict[str, Any]], Any]) -> Callable[..., Awaitable[None]]:
    """text_app's twin: an ASGI app that calls handler(session, scope) on the event loop (and
    awaits the result if it is awaitable) and answers 200 with it."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        result = handler(get_session(scope), scope)
        if inspect.isawaitable(result):
            result = await result
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(result).encode()})
    return app


def asgi(app: Any, **options: Any) -> ASGISessionMiddleware:
    options.setdefault("secret", SECRET)
    return ASGISessionMiddleware(app, **options)


def text_app(handler: Callable[[Session, dict[str, Any]], Any]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that calls handler(session, environ) and answers 200 with its result."""
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        result = handler(get_session(environ), environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(result).encode()]
    return app


def counter(session: Session, environ: dict[str, Any]) -> int:
    session["views"] = session.get("views", 0) + 1
    return session["views"]


def reader(session: Session, environ: dict[str, Any]) -> Any:
    return session.get("views")


class RecordingStore:
    """A MemoryStore that records each call, to check which calls the lifecycle makes."""

    blocking = False  # (ASGI calls it on the event loop's thread, as it does a MemoryStore)

    def __init__(self, inner: Any = None, touch: bool = True, update: bool = True) -> None:
        self.inner = inner if inner is not None else MemoryStore(now=Clock(time.time()))
        self.calls: list[tuple[str, str]] = []
        self.documents: list[dict[str, Any]] = []
        if not touch:
            self.touch = None  # type: ignore[assignment]
        if not update:
            self.update = None  # type: ignore[assignment]

    def get(self, sid: str) -> Any:
        self.calls.append(("get", sid))
        return self.inner.get(sid)

    def set(self, sid: str, session: dict[str, Any], max_age: int | None = None) -> None:
        self.calls.append(("set", sid))
        self.documents.append(json.loads(json.dumps(session)))
        self.inner.set(sid, session, max_age)

    def update(self, sid: str, changes: Any, deleted: Any, cookie: Any, max_age: Any = None) -> bool:
        self.calls.append(("update", sid))
        return self.inner.update(sid, changes, deleted, cookie, max_age)  # type: ignore[no-any-return]

    def touch(self, sid: str, session: dict[str, Any]) -> Any:
        self.calls.append(("touch", sid))
        return self.inner.touch(sid, session)

    def destroy(self, sid: str) -> None:
        self.calls.append(("destroy", sid))
        self.inner.destroy(sid)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


class RecordingMemoryStore(MemoryStore):
    """RecordingStore's record of calls, from a MemoryStore that the wrappers still hand their
    sessions as they have them (its set, update and touch are MemoryStore's own): the path of
    the default store. `inner` reads and writes without recording."""

    def __init__(self, now: Any) -> None:
        super().__init__(now=now)
        self.calls: list[tuple[str, str]] = []
        self.documents: list[dict[str, Any]] = []
        self.inner = types.SimpleNamespace(get=functools.partial(MemoryStore.get, self), set=self.set_unrecorded)

    def set_unrecorded(self, sid: str, session: dict[str, Any]) -> None:
        data = {key: value for key, value in session.items() if key != "cookie"}
        MemoryStore._set_session(self, sid, bs._dumps(data), data, session["cookie"])

    def get(self, sid: str) -> Any:
        self.calls.append(("get", sid))
        return super().get(sid)

    def _set_session(self, sid: str, data_json: str, data: Any, cookie: Any) -> None:
        self.calls.append(("set", sid))
        self.documents.append({"cookie": cookie.to_dict(), **json.loads(data_json)})
        super()._set_session(sid, data_json, data, cookie)

    def _update_session(self, sid: str, base_json: str, data_json: str, data: Any, cookie: SessionCookie) -> bool:
        self.calls.append(("update", sid))
        return super()._update_session(sid, base_json, data_json, data, cookie)

    def _touch_session(self, sid: str, cookie: SessionCookie) -> bool:
        self.calls.append(("touch", sid))
        return super()._touch_session(sid, cookie)

    def destroy(self, sid: str) -> None:
        self.calls.append(("destroy", sid))
        super().destroy(sid)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


def sid_of(set_cookie: str) -> str:
    value = urllib.parse.unquote(set_cookie.split(";", 1)[0].split("=", 1)[1])
    return value[2:].rsplit(".", 1)[0]


def wsgi(app: Any, **options: Any) -> SessionMiddleware:
    options.setdefault("secret", SECRET)
    return SessionMiddleware(app, **options)


def run_threads(targets: list[Callable[[], None]], timeout: float = 120) -> list[BaseException]:
    """Run the targets in threads at once; return what they raised."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)
    threads = [threading.Thread(target=guarded, args=(target,), daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            errors.append(AssertionError(f"a thread was still running after {timeout} s"))
    return errors


def read_line(stream: Any, timeout: float) -> str:
    """One line from a child's pipe, or AssertionError if none comes within `timeout`."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines:
        raise AssertionError(f"no output within {timeout} s")
    return lines[0]


def stop_process(process: Any) -> None:
    """Terminate a child (subprocess.Popen or multiprocessing.Process); kill it if it lingers."""
    if isinstance(process, subprocess.Popen):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        return
    if process.is_alive():
        process.terminate()
        process.join(10)
    if process.is_alive():
        process.kill()
        process.join(10)


# ---------------------------------------------------------------------------
# §1 Public names and the demo
# ---------------------------------------------------------------------------

class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def get_stderr(self) -> Any:
        return io.StringIO()  # the expected tracebacks of 500 tests


class LiveServer:
    """A real threaded wsgiref server on a free loopback port, for end-to-end tests."""

    def __init__(self, app: Any) -> None:
        self.server = make_server("127.0.0.1", 0, app, server_class=ThreadingServer,
                                  handler_class=QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def browser(follow_redirects: bool = True) -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar]:
    jar = http.cookiejar.CookieJar()
    handlers: list[Any] = [urllib.request.HTTPCookieProcessor(jar)]
    if not follow_redirects:
        handlers.append(NoRedirect())
    return urllib.request.build_opener(*handlers), jar


def fetch(opener: urllib.request.OpenerDirector, url: str, data: bytes | None = None) -> tuple[int, str]:
    try:
        with opener.open(url, data=data, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class TestPublicNames(unittest.TestCase):
    def test_public_names_are_exported(self) -> None:
        for name in ("SessionMiddleware", "ASGISessionMiddleware", "get_session", "Session", "SessionCookie",
                     "Store", "MemoryStore", "FileStore", "RedisStore", "AsyncRedisStore",
                     "FlaskSessionInterface", "QuartSessionInterface", "sign", "unsign"):
            self.assertIn(name, bs.__all__)
            self.assertTrue(hasattr(bs, name))

    def test_session_store_is_djangos_engine_and_imports_nothing_until_asked(self) -> None:
        # SessionStore is Django's (SESSION_ENGINE reads it), so `import *` must not build it.
        self.assertNotIn("SessionStore", bs.__all__)
        code = ("import sys, bunway_session; from bunway_session import *; "
                "print(sorted(m for m in ('django', 'flask', 'quart', 'redis', 'psycopg') if m in sys.modules))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              cwd=os.path.dirname(os.path.abspath(bs.__file__)), check=False)
        self.assertEqual(done.stdout.strip(), "[]", done.stderr)
        try:
            import django  # noqa: F401
        except ImportError:
            with self.assertRaisesRegex(ImportError, r"pip install django.*bunway_session\.Store"):
                bs.SessionStore  # noqa: B018
        else:
            self.assertEqual(bs.SessionStore.__name__, "SessionStore")
            self.assertIn("SessionBase", [cls.__name__ for cls in bs.SessionStore.__mro__])
        with self.assertRaises(AttributeError):
            bs.NoSuchName  # noqa: B018

    def test_session_is_a_dict(self) -> None:
        app = wsgi(text_app(lambda s, e: isinstance(s, dict) and isinstance(s, Session)))
        self.assertEqual(Client(app).request().body, b"True")

    def test_demo_login_flash_protected_logout_over_http(self) -> None:
        app = SessionMiddleware(bs.demo_app, secret=SECRET, save_uninitialized=False)
        with LiveServer(app) as live:
            opener, jar = browser()
            status, page = fetch(opener, live.url + "/")
            self.assertEqual((status, "seen this page 1 time." in page), (200, True))
            status, page = fetch(opener, live.url + "/")
            self.assertIn("seen this page 2 times.", page)
            first_id = next(iter(jar)).value

            self.assertEqual(fetch(opener, live.url + "/dashboard")[0], 401)
            status, page = fetch(opener, live.url + "/login",
                                 urllib.parse.urlencode({"username": "alice", "password": "nope"}).encode())
            self.assertIn("Wrong username or password.", page)

            status, page = fetch(opener, live.url + "/login",
                                 urllib.parse.urlencode({"username": "alice", "password": "wonderland"}).encode())
            self.assertEqual(status, 200)          # redirected to the dashboard
            self.assertIn("Welcome, alice!", page)  # the flash message, shown once
            self.assertIn("Signed in as <b>alice</b>", page)
            self.assertNotEqual(next(iter(jar)).value, first_id, "login must regenerate the ID")
            status, page = fetch(opener, live.url + "/dashboard")
            self.assertEqual(status, 200)
            self.assertNotIn("Welcome, alice!", page)

            status, page = fetch(opener, live.url + "/logout", b"")
            self.assertIn("Not signed in", page)
            self.assertEqual(fetch(opener, live.url + "/dashboard")[0], 401)

    def test_demo_command_serves_on_loopback(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            process = subprocess.Popen(
                [sys.executable, os.path.abspath(bs.__file__), "--port", "0", "--store", "file",
                 "--path", os.path.join(folder, "sessions")],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "SESSION_SECRET": "a demo secret of more than thirty-two bytes"})
            try:
                banner = read_line(process.stdout, 30)
                url = banner.split(" on ", 1)[1].split()[0] if " on http" in banner else ""
                self.assertRegex(url, r"^http://127\.0\.0\.1:\d+/$", banner)
                self.assertIn("sessions are kept in", banner)
                self.assertNotIn("SESSION_SECRET", banner)  # it is set: no advice to set it
                opener, _ = browser()
                status, page = fetch(opener, url)
                self.assertEqual(status, 200)
                self.assertIn("You have seen this page 1 time.", page)
                self.assertEqual(len(os.listdir(os.path.join(folder, "sessions"))), 1)
            finally:
                stop_process(process)

    def test_demo_banner_tells_the_truth_about_the_memory_store(self) -> None:
        process = subprocess.Popen([sys.executable, os.path.abspath(bs.__file__), "--port", "0"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            banner = read_line(process.stdout, 30)
            self.assertIn("sessions live in memory and end when the server stops", banner)
            self.assertNotIn("SESSION_SECRET", banner)  # a secret would not keep them
        finally:
            stop_process(process)

    def test_demo_on_a_busy_port_says_so_in_one_line(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            done = subprocess.run([sys.executable, os.path.abspath(bs.__file__), "--port", str(port)],
                                  capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stdout, "")
        self.assertEqual(done.stderr.strip().splitlines(),
                         [(f"bunway_session demo: cannot listen on 127.0.0.1:{port} (Address already in use); "
                           "choose another port with --port")])

    def test_demo_logout_needs_post(self) -> None:
        client = Client(SessionMiddleware(bs.demo_app, secret=SECRET, save_uninitialized=False))
        response = client.request("/logout")
        self.assertEqual(response.code, 405)
        self.assertIn(("Allow", "POST"), response.headers)


# ---------------------------------------------------------------------------
# §2 The wrapper and its options
# ---------------------------------------------------------------------------

def errors_as_another_user(call: Callable[[], Any]) -> list[str]:
    """The error messages of call(): here, or, when the tests run as root (who may write
    anywhere), in a forked child that has become the user "nobody" first."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        try:
            call()
        except OSError as error:
            return [str(error)]
        return []
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        message = b""
        try:
            os.setgid(65534)
            os.setuid(65534)
            call()
        except OSError as error:
            message = str(error).encode()
        finally:
            os.write(writing, message)
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    return [message.decode()] if message else []


class TestOptions(unittest.TestCase):
    def test_defaults_match_express_session(self) -> None:
        clock = Clock()
        app = wsgi(text_app(reader), now=clock)
        self.assertIsInstance(app.store, MemoryStore)
        self.assertEqual((app.name, app.resave, app.save_uninitialized, app.rolling, app.proxy),
                         ("connect.sid", True, True, False, None))
        header = Client(app).request().session_cookie()
        assert header is not None
        self.assertRegex(header, r"^connect\.sid=s%3A[A-Za-z0-9_-]{32}\.[A-Za-z0-9%]+; Path=/; "
                                 r"Expires=Fri, 27 Nov 2026 20:38:36 GMT; HttpOnly; SameSite=Lax$")
        stored = app.store.get(sid_of(header))
        self.assertEqual(stored["cookie"], {"originalMaxAge": 86_400_000, "expires": "2026-11-27T20:38:36.873Z",
                                            "secure": False, "httpOnly": True, "path": "/", "sameSite": "lax"})

    def test_express_spellings_are_accepted(self) -> None:
        app = wsgi(text_app(reader), saveUninitialized=False,
                   cookie={"maxAge": 60_000, "httpOnly": False, "sameSite": "strict"})
        self.assertFalse(app.save_uninitialized)
        app2 = wsgi(text_app(counter), cookie={"maxAge": 60_000, "httpOnly": False, "sameSite": "strict"},
                    now=Clock())
        header = Client(app2).request().session_cookie()
        self.assertEqual(header.split("; ", 1)[1], "Path=/; Expires=Thu, 26 Nov 2026 20:39:36 GMT; SameSite=Strict")

    def test_bad_configuration_names_the_option(self) -> None:
        app = text_app(reader)
        cases: list[tuple[dict[str, Any], type, str]] = [
            ({}, TypeError, "secret is required"),
            ({"secret": ""}, ValueError, "secret must not be empty"),
            ({"secret": []}, ValueError, "empty list"),
            ({"secret": ["ok", ""]}, ValueError, "secret must not be empty"),
            ({"secret": 42}, TypeError, "secret must be a str or bytes"),
            ({"secret": "s", "resav": False}, TypeError, "unknown SessionMiddleware option 'resav'.*'resave'"),
            ({"secret": "s", "saveUninitialized": False, "save_uninitialized": True}, TypeError, "not both"),
            ({"secret": "s", "cookie": {"maxage": 1}}, TypeError, "unknown cookie option 'maxage'.*did you mean"),
            ({"secret": "s", "cookie": {"max_age": 1, "maxAge": 2}}, TypeError, "given twice"),
            ({"secret": "s", "cookie": {"max_age": "1h"}}, TypeError, "max_age must be milliseconds"),
            ({"secret": "s", "cookie": {"max_age": -5}}, ValueError, "max_age must be a positive"),
            ({"secret": "s", "cookie": {"max_age": float("inf")}}, ValueError, "max_age must be a finite"),
            ({"secret": "s", "cookie": {"expires": datetime(2030, 1, 1)}}, TypeError, "timezone-aware"),
            ({"secret": "s", "cookie": {"max_age": 5, "expires": datetime(2030, 1, 1, tzinfo=UTC)}},
             ValueError, "max_age or expires"),
            ({"secret": "s", "cookie": {"secure": "yes"}}, TypeError, "secure"),
            ({"secret": "s", "cookie": {"http_only": 1}}, TypeError, "http_only"),
            ({"secret": "s", "cookie": {"same_site": "sometimes"}}, ValueError, "same_site must be one of"),
            ({"secret": "s", "cookie": {"priority": "urgent"}}, ValueError, "priority must be one of"),
            ({"secret": "s", "cookie": {"path": "app"}}, ValueError, "path must be a str starting with '/'"),
            ({"secret": "s", "cookie": {"domain": "a b"}}, ValueError, "domain"),
            ({"secret": "s", "cookie": {"partitioned": "yes"}}, TypeError, "partitioned"),
            ({"secret": "s", "cookie": ["max_age"]}, TypeError, "cookie must be a dict"),
            ({"secret": "s", "name": ""}, ValueError, "name must be a valid cookie name"),
            ({"secret": "s", "name": "a b"}, ValueError, "name must be a valid cookie name"),
            ({"secret": "s", "resave": "no"}, TypeError, "resave must be True or False"),
            ({"secret": "s", "rolling": None}, TypeError, "rolling must be True or False"),
            ({"secret": "s", "save_uninitialized": 0}, TypeError, "save_uninitialized"),
            ({"secret": "s", "genid": "abc"}, TypeError, "genid must be a callable"),
            ({"secret": "s", "proxy": "yes"}, TypeError, "proxy must be None, True or False"),
            ({"secret": "s", "store": object()}, TypeError, "store must have get, set and destroy"),
        ]
        for options, error, message in cases:
            with self.subTest(options=options), self.assertRaisesRegex(error, message):
                SessionMiddleware(app, **options)
        with self.assertRaisesRegex(TypeError, "app must be a WSGI application"):
            SessionMiddleware(None, secret="s")  # type: ignore[arg-type]

    def test_no_secret_says_how_to_make_one(self) -> None:
        with self.assertRaisesRegex(TypeError, r"secret=os.environ\['SESSION_SECRET'\].*secrets.token_hex\(32\)"):
            SessionMiddleware(text_app(reader))

    def test_a_store_class_instead_of_an_instance_is_refused(self) -> None:
        with self.assertRaisesRegex(TypeError, r"store=MemoryStore is a class; give an instance: "
                                               r"store=MemoryStore\(\.\.\.\)"):
            SessionMiddleware(text_app(reader), secret=LONG_SECRET, store=MemoryStore)

    def test_the_wrong_wrapper_for_the_app_is_refused_with_the_right_one_named(self) -> None:
        async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
            pass

        class ASGIApp:
            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                pass
        for app in (asgi_app, ASGIApp(), lambda scope, receive, send: None):
            with self.subTest(app=app), self.assertRaisesRegex(TypeError, "wrap it in ASGISessionMiddleware, "
                                                                         "not SessionMiddleware"):
                SessionMiddleware(app, secret=LONG_SECRET)
        for app in (text_app(reader), lambda environ, start_response: []):
            with self.subTest(app=app), self.assertRaisesRegex(TypeError, "wrap it in SessionMiddleware, "
                                                                         "not ASGISessionMiddleware"):
                ASGISessionMiddleware(app, secret=LONG_SECRET)
        # What cannot be told when the wrapper is built fails its first call, naming the other one.
        sneaky = SessionMiddleware(lambda *arguments: asgi_app(*arguments, None), secret=LONG_SECRET)
        with self.assertRaisesRegex(TypeError, "the app returned an awaitable: it is an ASGI.*ASGISessionMiddleware"):
            Client(sneaky, validate=False).request()

    def test_the_flask_app_itself_is_refused_with_the_session_interface_named(self) -> None:
        flask = optional("flask")
        with self.assertRaisesRegex(TypeError, r"given the Flask app itself.*app\.session_interface = "
                                               r"FlaskSessionInterface"):
            SessionMiddleware(flask.Flask(__name__), secret=LONG_SECRET)
        SessionMiddleware(flask.Flask(__name__).wsgi_app, secret=LONG_SECRET)   # what is meant

    def test_a_redis_client_of_the_wrong_kind_is_refused_when_the_store_is_built(self) -> None:
        class SyncClient:
            def get(self, key: str) -> None:
                return None

        class AsyncClient:
            async def execute_command(self, *arguments: Any) -> None:
                return None
        with self.assertRaisesRegex(TypeError, r"RedisStore needs a sync client.*use AsyncRedisStore\(client\)"):
            RedisStore(AsyncClient())
        with self.assertRaisesRegex(TypeError, r"AsyncRedisStore needs an asyncio client.*use RedisStore\(client\)"):
            bs.AsyncRedisStore(SyncClient())
        with self.assertRaisesRegex(TypeError, "QuartSessionInterface: under WSGI use RedisStore"):
            SessionMiddleware(text_app(reader), secret=LONG_SECRET, store=bs.AsyncRedisStore(AsyncClient()))

    def test_real_redis_clients_of_the_wrong_kind_are_refused(self) -> None:
        redis = optional("redis")
        asyncio_redis = optional("redis.asyncio")
        async def asyncio_client() -> Any:   # (Python 3.9's asyncio wants a running loop for it)
            return asyncio_redis.Redis()
        with self.assertRaisesRegex(TypeError, "use AsyncRedisStore"):
            RedisStore(asyncio.run(asyncio_client()))
        with self.assertRaisesRegex(TypeError, "use RedisStore"):
            bs.AsyncRedisStore(redis.Redis())

    def test_file_store_paths_it_cannot_use_are_refused_when_it_is_built(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        a_file = os.path.join(folder, "sessions")
        with open(a_file, "w", encoding="utf-8"):
            pass
        with self.assertRaisesRegex(NotADirectoryError, r"FileStore path .*sessions' is a file, not a folder"):
            FileStore(a_file)
        # A folder this process cannot write (as root, tried in a child that is another user).
        locked = os.path.join(folder, "locked")
        os.mkdir(locked, 0o500)
        os.chmod(folder, 0o755)
        errors = errors_as_another_user(lambda: [FileStore(locked, shared_folder=shared) for shared in (True, False)])
        self.assertEqual(len(errors), 1, errors)
        self.assertRegex(errors[0], r"FileStore cannot write in its folder .*locked'.*chown")

    def test_likely_mistakes_are_warned_about_once_per_wrapper_and_still_work(self) -> None:
        def warnings(**options: Any) -> list[str]:
            with self.assertLogs("bunway_session", "WARNING") as logs:
                app = wsgi(text_app(counter), **options)
                client = Client(app)
                client.request()
                client.request()
                bs.log.warning("end")
            return logs.output[:-1]
        self.assertEqual(warnings(secret=LONG_SECRET), [])
        short = warnings(secret="keyboard cat")
        self.assertEqual(len(short), 1)
        self.assertRegex(short[0], r"a secret of 12 bytes is short.*secrets.token_hex\(32\)")
        self.assertEqual(len(warnings(secret=["keyboard cat", LONG_SECRET])), 1, "an old secret counts too")
        node_config = warnings(secret=LONG_SECRET, cookie={"maxAge": 3600})
        self.assertEqual(len(node_config), 1)
        self.assertIn("max_age=3600 is in milliseconds, as in express-session: 3.6 seconds. Did you mean seconds?",
                      node_config[0])
        self.assertEqual(warnings(secret=LONG_SECRET, cookie={"max_age": timedelta(seconds=30)}), [])
        self.assertEqual(warnings(secret=LONG_SECRET, cookie={"maxAge": 3_600_000}), [])
        none = warnings(secret=LONG_SECRET, cookie={"same_site": "none"})
        self.assertEqual(len(none), 1)
        self.assertIn("same_site='none' without secure: browsers drop", none[0])
        self.assertEqual(warnings(secret=LONG_SECRET, cookie={"same_site": "none", "secure": "auto"}), [])
        plain_http = warnings(secret=LONG_SECRET, cookie={"secure": True})   # two requests over http
        self.assertEqual(len(plain_http), 1)
        self.assertIn("a Secure session cookie was not sent: the request came over plain http. Behind a proxy "
                      "that terminates TLS, pass proxy=True", plain_http[0])
        callable_cookie = warnings(secret=LONG_SECRET, cookie=lambda environ: {"max_age": 10})
        self.assertEqual(len(callable_cookie), 1, "a callable's options: once per wrapper, not per request")

    def test_the_default_store_is_shared_only_between_wrappers_that_accept_each_others_cookies(self) -> None:
        public = Client(SessionMiddleware(text_app(counter), secret=LONG_SECRET))
        public.request()
        twin = Client(SessionMiddleware(text_app(counter), secret=LONG_SECRET))   # a per-route copy (Litestar)
        twin.cookies = dict(public.cookies)
        self.assertEqual(twin.request().body, b"2", "wrappers that would accept each other's cookies share one")
        admin = Client(SessionMiddleware(text_app(counter), secret=LONG_SECRET, cookie={"path": "/admin"}))
        self.assertEqual(admin.request("/admin/", cookie=jar_header(public)).body, b"1",
                         "an app with its own cookie path must not load the public app's sessions")
        other_name = Client(SessionMiddleware(text_app(counter), secret=LONG_SECRET, name="admin.sid"))
        self.assertEqual(other_name.request(cookie="admin.sid=" + public.cookies["connect.sid"]).body, b"1")

    def test_secret_may_be_bytes_or_a_list(self) -> None:
        for secret in (b"raw bytes", ["new", "old"], ("new",)):
            with self.subTest(secret=secret):
                client = Client(wsgi(text_app(counter), secret=secret))
                client.request()
                self.assertEqual(client.request().body, b"2")

    def test_secret_rotation_new_signs_old_still_verifies(self) -> None:
        store = MemoryStore()
        old = Client(wsgi(text_app(counter), secret="old", store=store))
        old.request()
        rotated = wsgi(text_app(counter), secret=["new", "old"], store=store, rolling=True)
        client = Client(rotated)
        client.cookies = dict(old.cookies)
        response = client.request()
        self.assertEqual(response.body, b"2")
        value = urllib.parse.unquote(client.cookies["connect.sid"])[2:]
        self.assertEqual(unsign(value, "new"), sid_of(response.session_cookie()))
        self.assertIsNone(unsign(value, "old"))

    def test_cookie_options_may_be_a_callable_of_the_environ(self) -> None:
        def per_request(environ: dict[str, Any]) -> dict[str, Any]:
            return {"path": "/", "domain": environ["HTTP_HOST"].split(":")[0]}
        client = Client(wsgi(text_app(counter), cookie=per_request))
        header = client.request(headers={"Host": "shop.example.com"}).session_cookie()
        self.assertIn("; Domain=shop.example.com; Path=/;", header)

    def test_max_age_as_timedelta_and_none(self) -> None:
        clock = Clock()
        app = wsgi(text_app(counter), cookie={"max_age": timedelta(hours=1)}, now=clock)
        self.assertIn("Expires=Thu, 26 Nov 2026 21:38:36 GMT", Client(app).request().session_cookie())
        browser_session = wsgi(text_app(counter), cookie={"max_age": None}, now=clock)
        header = Client(browser_session).request().session_cookie()
        self.assertNotIn("Expires", header)
        stored = browser_session.store.get(sid_of(header))
        self.assertEqual((stored["cookie"]["originalMaxAge"], stored["cookie"]["expires"]), (None, None))

    def test_absolute_expires(self) -> None:
        clock = Clock()
        when = datetime(2026, 12, 25, tzinfo=UTC)
        app = wsgi(text_app(counter), cookie={"expires": when}, now=clock)
        header = Client(app).request().session_cookie()
        self.assertIn("Expires=Fri, 25 Dec 2026 00:00:00 GMT", header)
        self.assertEqual(app.store.get(sid_of(header))["cookie"]["expires"], "2026-12-25T00:00:00.000Z")

    def test_cookie_attributes(self) -> None:
        app = wsgi(text_app(counter), cookie={"secure": True, "domain": "example.com", "same_site": "none",
                                              "partitioned": True, "priority": "high", "http_only": False},
                   now=Clock())
        header = Client(app).request(https=True).session_cookie()
        self.assertEqual(header.split("; ", 1)[1], "Domain=example.com; Path=/; Expires=Fri, 27 Nov 2026 "
                         "20:38:36 GMT; Secure; Partitioned; Priority=High; SameSite=None")
        no_same_site = wsgi(text_app(counter), cookie={"same_site": None})
        self.assertNotIn("SameSite", Client(no_same_site).request().session_cookie())
        strict = wsgi(text_app(counter), cookie={"same_site": True})
        self.assertIn("SameSite=Strict", Client(strict).request().session_cookie())

    def test_secure_and_same_site_auto_follow_the_request(self) -> None:
        app = wsgi(text_app(counter), cookie={"secure": "auto", "same_site": "auto"})
        secure = Client(app).request(https=True).session_cookie()
        self.assertTrue(secure.endswith("; HttpOnly; Secure; SameSite=None"), secure)
        plain = Client(app).request().session_cookie()
        self.assertTrue(plain.endswith("; HttpOnly; SameSite=Lax"), plain)

    def test_proxy_decides_whether_x_forwarded_proto_counts(self) -> None:
        forwarded = {"X-Forwarded-Proto": "https, http"}
        trusting = wsgi(text_app(counter), cookie={"secure": True}, proxy=True)
        self.assertIsNotNone(Client(trusting).request(headers=forwarded).session_cookie())
        for proxy in (None, False):
            with self.subTest(proxy=proxy):
                untrusting = wsgi(text_app(counter), cookie={"secure": True}, proxy=proxy)
                self.assertIsNone(Client(untrusting).request(headers=forwarded).session_cookie())
        self.assertIsNone(Client(trusting).request(headers={"X-Forwarded-Proto": "http, https"}).session_cookie())

    def test_genid_makes_the_ids(self) -> None:
        seen: list[dict[str, Any]] = []

        def genid(environ: dict[str, Any]) -> str:
            seen.append(environ)
            return f"id-{len(seen)}"
        header = Client(wsgi(text_app(counter), genid=genid)).request().session_cookie()
        self.assertEqual(sid_of(header), "id-1")
        self.assertIn("PATH_INFO", seen[0])
        with self.assertRaisesRegex(TypeError, "genid must return a non-empty str"):
            Client(wsgi(text_app(counter), genid=lambda environ: 7)).request()

    def test_default_ids_are_32_url_safe_characters_and_unique(self) -> None:
        app = wsgi(text_app(counter))
        ids = {sid_of(Client(app).request().session_cookie()) for _ in range(50)}
        self.assertEqual(len(ids), 50)
        for sid in ids:
            self.assertRegex(sid, r"^[A-Za-z0-9_-]{32}$")

    def test_new_ids_stay_unique_and_well_formed_across_batches(self) -> None:
        import base64
        batched, one_by_one = bs._SessionIds(), bs._SessionIds()
        one_by_one._marker = None   # where the kernel cannot wipe a page on fork
        for source in (batched, one_by_one):
            with self.subTest(batched=source is batched):
                ids = [source.draw() for _ in range(3 * source.BATCH + 5)]
                self.assertEqual(len(set(ids)), len(ids))
                for sid in ids:
                    self.assertRegex(sid, r"^[A-Za-z0-9_-]{32}$")
                    self.assertEqual(len(base64.urlsafe_b64decode(sid)), 24)

    def test_threads_drawing_ids_at_once_never_share_one(self) -> None:
        source = bs._SessionIds()
        barrier = threading.Barrier(8, timeout=30)
        drawn: list[list[str]] = []

        def draw() -> None:
            barrier.wait()
            drawn.append([source.draw() for _ in range(300)])
        threads = [threading.Thread(target=draw) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        ids = [sid for batch in drawn for sid in batch]
        self.assertEqual(len(ids), 8 * 300)
        self.assertEqual(len(set(ids)), len(ids))

    @unittest.skipIf(bs._new_session_id.__self__._marker is None,
                     "IDs are drawn one at a time here: the kernel cannot wipe a page on fork (not Linux >= 4.14)")
    def test_a_forked_child_never_hands_out_an_id_its_parent_holds(self) -> None:
        # The parent has a batch in hand when it forks: through Python (os.fork, whose hooks
        # run) and straight through libc, as a server that forks from C does. Each child,
        # and a grandchild, draws IDs of its own.
        script = textwrap.dedent("""
            import ctypes, json, os, sys
            sys.path.insert(0, sys.argv[1])
            import bunway_session as bs
            draw = bs._new_session_id

            def in_child(fork, work):
                read, write = os.pipe()
                pid = fork()
                if pid == 0:
                    try:
                        os.write(write, json.dumps(work()).encode())
                    finally:
                        os._exit(0)
                os.close(write)
                os.waitpid(pid, 0)
                with os.fdopen(read) as pipe:
                    return json.loads(pipe.read())

            def five():
                return [draw() for _ in range(5)]

            def child_and_grandchild():
                draw()  # the child's own batch
                return {"grandchild": in_child(libc_fork, five), "child": five()}

            libc_fork = ctypes.CDLL(None, use_errno=True).fork
            draw()  # the parent's batch
            report = {"os.fork": in_child(os.fork, five), "libc fork": in_child(libc_fork, five),
                      "nested": in_child(libc_fork, child_and_grandchild), "parent": five()}
            print(json.dumps(report))
        """)
        done = subprocess.run([sys.executable, "-c", script, os.path.dirname(os.path.abspath(bs.__file__))],
                              check=False, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        report = json.loads(done.stdout)
        parent = set(report["parent"])
        for fork in ("os.fork", "libc fork"):
            with self.subTest(fork=fork):
                self.assertEqual(len(report[fork]), 5)
                self.assertFalse(parent & set(report[fork]), "a child drew its parent's IDs")
        child, grandchild = set(report["nested"]["child"]), set(report["nested"]["grandchild"])
        self.assertEqual(len(grandchild), 5)
        self.assertFalse(child & grandchild, "a grandchild drew its parent's IDs")

    def test_get_session_without_a_session_is_a_clear_error(self) -> None:
        with self.assertRaisesRegex(LookupError, "wrap the app in SessionMiddleware"):
            get_session({})


# ---------------------------------------------------------------------------
# §3 Wire formats
# ---------------------------------------------------------------------------

# Made with the npm package cookie-signature 1.0.7 (the one express-session 1.19 uses):
#   npm install express-session@1.19 && node -e "const s=require('express-session/node_modules/
#   cookie-signature'); console.log(s.sign(value, secret))" for each [value, secret] below.
NODE_SIGNATURES = [
    ("hello", "tobiiscool", "hello.DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI"),
    ("s3ss10n-1d_ABCdef0123456789xyzXYZ", "keyboard cat",
     "s3ss10n-1d_ABCdef0123456789xyzXYZ.Y/us/DfCPoZsCSkYwWa6pDPS7OyArYjUURIYYlIAlfA"),
    ("", "secret", ".+eZuF5tnR65UEI+C+K3os8Jddv0wr95sOVgixTAZYWk"),
    ("a.b.c", "dots.in.value", "a.b.c.vhhNiaRTUuYa+qliHNRCv3LQIWW5O/zX2szFeAYqWN0"),
    ("ünïcødé ☃", "sécret", "ünïcødé ☃.peMofK2BIR6Qu6T/h7zWyQ2Ruxr4n3yq9OIQnj0chgA"),
    ("Yi0qQ7Ob8Mgk3N1TKNwaHx9tmU-RPf_2", "x" * 100,
     "Yi0qQ7Ob8Mgk3N1TKNwaHx9tmU-RPf_2.eR8MHAjuxPra+Rw9hCbE0sCYF7sHTxsIlyaslzB1k+4"),
    ("value with spaces; and=equals", "another secret",
     "value with spaces; and=equals.l1n7/RVXe39opQxnNpuszFEqxVui/nTfOtE9ncDo43M"),
]

# Made with express 4.21, express-session 1.19.0 (MemoryStore), at 2026-11-26T20:38:36.873Z:
#   session({secret: 'keyboard cat', resave: false, saveUninitialized: false,
#            genid: () => 'Yi0qQ7Ob8Mgk3N1TKNwaHx9tmU-RPf_2', cookie: {maxAge: 86400000,
#            secure: false, sameSite: 'lax', priority: 'high', partitioned: true, domain: 'example.com'}})
#   a route setting req.session.views = 1 and req.session.flash = {info: ['hi']};
#   the response's Set-Cookie and the store's JSON text:
EXPRESS_SET_COOKIE = ("connect.sid=s%3AYi0qQ7Ob8Mgk3N1TKNwaHx9tmU-RPf_2.yVQd2hvcbErVkGVZuChyiC8%2FKzu9SqBICj2EuPjTHa4; "
                      "Domain=example.com; Path=/; Expires=Fri, 27 Nov 2026 20:38:36 GMT; HttpOnly; "
                      "Partitioned; Priority=High; SameSite=Lax")
EXPRESS_DOCUMENT = ('{"cookie":{"originalMaxAge":86400000,"partitioned":true,"priority":"high",'
                    '"expires":"2026-11-27T20:38:36.873Z","secure":false,"httpOnly":true,'
                    '"domain":"example.com","path":"/","sameSite":"lax"},"views":1,"flash":{"info":["hi"]}}')


class TestWireFormat(unittest.TestCase):
    def test_sign_matches_node_cookie_signature(self) -> None:
        for value, secret, signed in NODE_SIGNATURES:
            with self.subTest(value=value):
                self.assertEqual(sign(value, secret), signed)
                self.assertEqual(sign(value, secret.encode()), signed)
                self.assertEqual(unsign(signed, secret), value)

    def test_signatures_are_hmac_sha256_for_keys_of_every_length(self) -> None:
        import base64
        import hashlib
        import hmac
        for key in (b"", b"k", b"x" * 63, b"x" * 64, b"x" * 65, b"y" * 300, "sécret ☃".encode()):
            for value in ("", "a", "é" * 100, "s3ss10n-1d"):
                with self.subTest(key=key[:10], key_length=len(key), value=value[:5]):
                    expected = base64.b64encode(hmac.new(key, value.encode(), hashlib.sha256).digest())
                    self.assertEqual(sign(value, key), value + "." + expected.decode().rstrip("="))

    def test_unsign_rejects_what_does_not_verify(self) -> None:
        signed = sign("hello", "tobiiscool")
        self.assertIsNone(unsign(signed, "wrong"))
        self.assertIsNone(unsign(signed[:-1], "tobiiscool"))
        self.assertIsNone(unsign(signed + "x", "tobiiscool"))
        self.assertIsNone(unsign("hello", "tobiiscool"))
        self.assertIsNone(unsign("", "tobiiscool"))
        self.assertIsNone(unsign("héllo." + signed.split(".")[1], "tobiiscool"))
        tampered = "hellp" + signed[5:]
        self.assertIsNone(unsign(tampered, "tobiiscool"))

    def test_unsign_tries_every_secret_and_value_is_before_the_last_dot(self) -> None:
        signed = sign("a.b.c", "old")
        self.assertEqual(unsign(signed, ["new", "old"]), "a.b.c")
        self.assertEqual(unsign(signed, [b"new", b"old"]), "a.b.c")
        self.assertIsNone(unsign(signed, ["new", "newer"]))

    def test_set_cookie_and_document_byte_identical_to_express_session(self) -> None:
        store = RecordingStore(MemoryStore(now=Clock()))

        def handler(session: Session, environ: dict[str, Any]) -> str:
            session["views"] = 1
            session["flash"] = {"info": ["hi"]}
            return "ok"
        app = wsgi(text_app(handler), resave=False, save_uninitialized=False, store=store, now=Clock(),
                   genid=lambda environ: "Yi0qQ7Ob8Mgk3N1TKNwaHx9tmU-RPf_2",
                   cookie={"maxAge": 86400000, "secure": False, "sameSite": "lax", "priority": "high",
                           "partitioned": True, "domain": "example.com"})
        self.assertEqual(Client(app).request().session_cookie(), EXPRESS_SET_COOKIE)
        self.assertEqual(bs._dumps(store.documents[-1]), EXPRESS_DOCUMENT)

    def test_cookie_value_is_percent_encoded_as_encode_uri_component(self) -> None:
        self.assertEqual(bs._encode_uri_component("s:a/b+c=d.e f!~*'()"), "s%3Aa%2Fb%2Bc%3Dd.e%20f!~*'()")
        self.assertEqual(bs._encode_uri_component("ü€"), "%C3%BC%E2%82%AC")

    def test_timestamps_as_javascript_writes_them(self) -> None:
        ms = 1_795_725_516_873
        self.assertEqual(bs._iso_ms(ms), "2026-11-26T20:38:36.873Z")
        self.assertEqual(bs._iso_ms(ms - 873), "2026-11-26T20:38:36.000Z")
        self.assertEqual(bs._http_date(ms), "Thu, 26 Nov 2026 20:38:36 GMT")
        self.assertEqual(bs._http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT")
        self.assertEqual(bs._parse_iso_ms("2026-11-26T20:38:36.873Z"), ms)
        self.assertEqual(bs._parse_iso_ms("2026-11-26T20:38:36.873+00:00"), ms)
        with self.assertRaises(ValueError):
            bs._parse_iso_ms("yesterday")

    def test_cookie_header_is_read_as_express_reads_it(self) -> None:
        header = ' a=1; b="quoted"; bad; =nameless; c=x=y; d=%E2%98%83; e=%E2%98; f={"json": 1}; a=2; g = spaced '
        read = {name: bs._find_cookie(header, name) for name in "abcdefgh"}
        self.assertEqual({name: None if raw is None else bs._decode_cookie_value(raw) for name, raw in read.items()}, {
            "a": "1", "b": "quoted", "c": "x=y", "d": "☃", "e": "%E2%98", "f": '{"json": 1}', "g": "spaced",
            "h": None})

    def test_stored_cookie_readers_accept_missing_fields(self) -> None:
        cookie = SessionCookie.from_dict({})
        self.assertEqual((cookie.original_max_age, cookie.expires, cookie.secure, cookie.http_only,
                          cookie.path, cookie.domain, cookie.same_site, cookie.partitioned, cookie.priority),
                         (None, None, False, False, "/", None, None, False, None))
        node = SessionCookie.from_dict({"originalMaxAge": 86399999, "expires": "2026-11-27T20:38:36.873Z",
                                        "httpOnly": True, "path": "/", "sameSite": True})
        self.assertEqual(node.original_max_age, 86399999)  # Node's 1 ms short value, kept as given
        self.assertEqual(node.same_site, "strict")
        self.assertEqual(node.expires, datetime(2026, 11, 27, 20, 38, 36, 873000, tzinfo=UTC))

    def test_session_stored_by_node_loads_and_keeps_its_cookie(self) -> None:
        clock = Clock()
        store = MemoryStore(now=clock)
        document = json.loads(EXPRESS_DOCUMENT)
        store.set("Yi0qQ7Ob8Mgk3N1TKNwaHx9tmU-RPf_2", document)
        app = wsgi(text_app(counter), store=store, now=clock, cookie={"max_age": 1000, "domain": "other.org"})
        client = Client(app)
        client.cookies["connect.sid"] = EXPRESS_SET_COOKIE.split(";")[0].split("=", 1)[1]
        clock.advance(60_000)
        response = client.request()
        self.assertEqual(response.body, b"2")
        header = response.session_cookie()
        # The stored cookie decides: its domain, partitioned, priority; its max age slides.
        self.assertEqual(header, EXPRESS_SET_COOKIE.replace("20:38:36", "20:39:36"))

    def test_lastaccess_bookkeeping_is_not_session_data(self) -> None:
        clock = Clock()
        store = MemoryStore(now=clock)
        document = json.loads(EXPRESS_DOCUMENT)
        document["__lastAccess"] = 1
        store.set("sid-with-bookkeeping", document)
        client = Client(wsgi(text_app(lambda s, e: sorted(s)), store=store, now=clock))
        client.cookies["connect.sid"] = urllib.parse.quote("s:" + sign("sid-with-bookkeeping", SECRET))
        self.assertEqual(client.request().body, b"['flash', 'views']")


# ---------------------------------------------------------------------------
# §4 The request lifecycle
# ---------------------------------------------------------------------------

class EitherWrapper:
    """Tests that run under each wrapper: a subclass's wrap() says which."""

    def setUp(self) -> None:
        self.clock = Clock(time.time())
        self.store = self.recording_store(self.clock)

    @staticmethod
    def recording_store(clock: Clock) -> Any:
        """A store as a third-party one is called (documents), or as the default MemoryStore."""
        return RecordingStore(MemoryStore(now=clock))

    def wrap(self, handler: Callable[..., Any], **options: Any) -> Any:
        raise NotImplementedError

    def client(self, handler: Callable[..., Any] = counter, **options: Any) -> Any:
        """A client of the handler's app under this wrapper, with the test's store and clock."""
        options.setdefault("store", self.store)
        options.setdefault("now", self.clock)
        app = self.wrap(handler, **options)
        return Client(app) if isinstance(app, SessionMiddleware) else ASGIClient(app)


class LifecycleRules(EitherWrapper):
    """The rules of SPEC section 4, proven for each wrapper."""

    def test_an_id_only_read_under_save_uninitialized_false_is_neither_stored_nor_sent(self) -> None:
        ids: list[str] = []
        response = self.client(lambda s, e: ids.append(s.id) or "read", save_uninitialized=False).request()
        self.assertEqual(len(ids), 1)
        self.assertIsNone(response.session_cookie())
        self.assertIsNone(self.store.inner.get(ids[0]))
        self.assertEqual(self.store.kinds(), [])

    def test_a_stored_document_without_a_cookie_object_is_no_session(self) -> None:
        cookie = "connect.sid=" + SessionMiddleware(text_app(counter), secret=SECRET).cookie_value("plain")
        self.store.get = lambda sid: {"views": 5} if sid == "plain" else None   # type: ignore[method-assign]
        response = self.client(counter).request(cookie=cookie)
        self.assertEqual(response.body, b"1", "a document without its cookie object is not loaded")
        self.assertNotEqual(sid_of(response.session_cookie()), "plain")

    def test_new_session_is_saved_and_cookie_set_by_default(self) -> None:
        response = self.client(reader).request()
        self.assertIsNotNone(response.session_cookie())
        self.assertEqual(self.store.kinds(), ["set"])

    def test_a_change_is_a_change_of_json_not_of_python_equality(self) -> None:
        start = {"flag": 1, "zero": 0.0, "nested": [1], "same": "x"}
        client = self.client(lambda s, e: s.update(start), resave=False)
        client.request()
        sid = sid_of_jar(client)
        # 1 == True, 0.0 == -0.0 and [1] == [True] in Python; their JSON differs, so they change.
        changing = self.client(lambda s, e: s.update(flag=True, zero=-0.0, nested=[True], same="x"), resave=False)
        changing.request(cookie=jar_header(client))
        stored = self.store.inner.get(sid)
        self.assertEqual(bs._dumps({k: stored[k] for k in start}),
                         '{"flag":true,"zero":-0.0,"nested":[true],"same":"x"}')

    def test_regenerating_an_unused_session_stores_it_and_sends_its_cookie(self) -> None:
        response = self.client(lambda s, e: regenerate_only(s), save_uninitialized=False).request()
        sid = response.body.decode()
        self.assertEqual(sid_of(response.session_cookie()), sid)   # a new ID is a change
        self.assertEqual(self.store.kinds(), ["set"])
        self.assertEqual({k: v for k, v in self.store.inner.get(sid).items() if k != "cookie"}, {})

    def test_destroying_a_session_the_cookie_names_in_vain_expires_the_cookie(self) -> None:
        stale = "connect.sid=" + urllib.parse.quote("s:" + sign("gone-since", SECRET))
        response = self.client(lambda s, e: destroy(s), save_uninitialized=False).request(cookie=stale)
        self.assertIn("Expires=Thu, 01 Jan 1970 00:00:00 GMT", response.session_cookie() or "")
        self.assertEqual(self.store.kinds(), ["get"])

    def test_uninitialized_session_not_saved_and_no_cookie_without_save_uninitialized(self) -> None:
        response = self.client(reader, save_uninitialized=False).request()
        self.assertIsNone(response.session_cookie())
        self.assertEqual(self.store.calls, [])

    def test_modified_new_session_saved_even_without_save_uninitialized(self) -> None:
        response = self.client(counter, save_uninitialized=False).request()
        self.assertIsNotNone(response.session_cookie())
        self.assertEqual(self.store.kinds(), ["set"])

    def test_loaded_unmodified_session_with_resave_is_saved_without_cookie(self) -> None:
        client = self.client(counter)
        client.request()
        self.store.calls.clear()
        response = self.client(reader)
        response.cookies = client.cookies
        result = response.request()
        self.assertIsNone(result.session_cookie())
        self.assertEqual(self.store.kinds(), ["get", "update"])

    def test_loaded_unmodified_session_without_resave_is_only_touched(self) -> None:
        client = self.client(counter, resave=False)
        client.request()
        reading = self.client(reader, resave=False)
        reading.cookies = client.cookies
        self.store.calls.clear()
        self.clock.advance(5000)
        self.assertIsNone(reading.request().session_cookie())
        self.assertEqual(self.store.kinds(), ["get", "touch"])
        # The touch moved the stored expiry to now + max age.
        stored = self.store.inner.get(sid_of_jar(client))
        self.assertEqual(bs._parse_iso_ms(stored["cookie"]["expires"]), int(self.clock() * 1000) + 86_400_000)

    def test_store_without_touch_gets_no_touch(self) -> None:
        store = RecordingStore(MemoryStore(now=self.clock), touch=False)
        client = self.client(counter, resave=False, store=store)
        client.request()
        store.calls.clear()
        self.client(reader, resave=False, store=store).request(cookie=jar_header(client))
        self.assertEqual(store.kinds(), ["get"])

    def test_loaded_modified_session_is_saved_and_cookie_reset(self) -> None:
        client = self.client(counter, resave=False)
        client.request()
        self.store.calls.clear()
        self.clock.advance(60_000)
        response = client.request()
        self.assertEqual(response.body, b"2")
        self.assertEqual(self.store.kinds(), ["get", "update"])
        expected = bs._http_date(int(self.clock() * 1000) + 86_400_000)
        self.assertIn(f"Expires={expected}", response.session_cookie())

    def test_browser_session_cookie_not_resent_when_modified(self) -> None:
        client = self.client(counter, cookie={"max_age": None})
        self.assertIsNotNone(client.request().session_cookie())
        response = client.request()
        self.assertEqual(response.body, b"2")
        self.assertIsNone(response.session_cookie())

    def test_rolling_sets_the_cookie_on_every_response(self) -> None:
        client = self.client(reader, rolling=True)
        client.request()
        self.clock.advance(1000)
        response = client.request()
        self.assertIsNotNone(response.session_cookie())
        self.assertIn(bs._http_date(int(self.clock() * 1000) + 86_400_000), response.session_cookie())

    def test_a_new_session_whose_secure_cookie_cannot_be_sent_is_not_stored(self) -> None:
        for _ in range(3):   # each would otherwise leave a session nobody can come back to
            response = self.client(counter, cookie={"secure": True}).request()
            self.assertEqual((response.body, response.session_cookie()), (b"1", None))
        self.assertEqual(self.store.calls, [])
        client = self.client(counter, cookie={"secure": True})
        self.assertIsNotNone(client.request(https=True).session_cookie())
        self.assertEqual(self.store.kinds(), ["set"])
        # A loaded session is still saved over plain http (its client has the cookie already).
        self.assertEqual(client.request(cookie=jar_header(client)).body, b"2")
        self.assertEqual(self.store.kinds(), ["set", "get", "update"])

    def test_a_regenerated_id_counts_as_a_change_even_with_the_same_data(self) -> None:
        client = self.client(lambda s, e: s.update(user="alice"))
        client.request()
        old_id = sid_of_jar(client)

        def login_again(session: Session, environ: dict[str, Any]) -> str:
            session.regenerate()
            session["user"] = "alice"   # the data is what was loaded; only the ID changed
            return session.id
        relogin = self.client(login_again, save_uninitialized=False)
        relogin.cookies = dict(client.cookies)
        response = relogin.request()
        new_id = response.body.decode()
        self.assertEqual(sid_of(response.session_cookie()), new_id)
        self.assertEqual(self.store.inner.get(new_id)["user"], "alice")
        self.assertIsNone(self.store.inner.get(old_id))

    def test_reload_marks_the_reloaded_copy_as_saved(self) -> None:
        client = self.client(counter, resave=False)
        client.request()
        sid = sid_of_jar(client)

        def reloads(session: Session, environ: dict[str, Any]) -> Any:
            elsewhere = self.store.inner.get(sid)
            elsewhere["views"] = 5
            self.store.inner.set(sid, elsewhere)   # another request saved meanwhile
            session.reload()
            return session["views"]
        reloading = self.client(reloads, resave=False)
        reloading.cookies = client.cookies
        self.store.calls.clear()
        self.assertEqual(reloading.request().body, b"5")
        # What reload() read is what the store has: nothing to save, only a touch.
        self.assertEqual(self.store.kinds(), ["get", "get", "touch"])

    def test_destroying_a_secure_session_over_plain_http_sends_no_cookie(self) -> None:
        client = self.client(counter, cookie={"secure": True})
        client.request(https=True)
        sid = sid_of_jar(client)
        destroyer = self.client(lambda s, e: destroy(s), cookie={"secure": True})
        response = destroyer.request(cookie=jar_header(client))   # plain http
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.session_cookie())
        self.assertIsNone(self.store.inner.get(sid))
        # Over https the same destroy expires the cookie.
        client.request(https=True)
        response = destroyer.request(cookie=jar_header(client), https=True)
        self.assertIn("Expires=Thu, 01 Jan 1970 00:00:00 GMT", response.session_cookie() or "")

    def test_app_exception_drops_half_made_changes(self) -> None:
        client = self.client(counter)
        client.request()

        def failing(session: Session, environ: dict[str, Any]) -> None:
            session["views"] = 100
            raise ValueError("boom")
        broken = self.client(failing)
        broken.cookies = client.cookies
        self.store.calls.clear()
        with self.assertRaisesRegex(ValueError, "boom"):
            broken.request()
        self.assertEqual(self.store.kinds(), ["get"])
        self.assertEqual(client.request().body, b"2")


class UnderWSGI:
    def wrap(self, handler: Callable[..., Any], **options: Any) -> Any:
        return wsgi(text_app(handler), **options)


class UnderASGI:
    def wrap(self, handler: Callable[..., Any], **options: Any) -> Any:
        return asgi(asgi_text_app(handler), **options)


class OnMemoryStore:
    """The same rules on the default store's own path (see RecordingMemoryStore)."""

    recording_store = RecordingMemoryStore


class TestLifecycleWSGI(UnderWSGI, LifecycleRules, unittest.TestCase):
    pass


class TestLifecycleASGI(UnderASGI, LifecycleRules, unittest.TestCase):
    pass


class TestLifecycleWSGIMemoryStore(OnMemoryStore, UnderWSGI, LifecycleRules, unittest.TestCase):
    pass


class TestLifecycleASGIMemoryStore(OnMemoryStore, UnderASGI, LifecycleRules, unittest.TestCase):
    pass


class TestWSGIResponse(unittest.TestCase):
    """How SessionMiddleware commits a WSGI response: start_response, write(), bodies."""

    def setUp(self) -> None:
        self.clock = Clock(time.time())
        self.store = RecordingStore(MemoryStore(now=self.clock))

    def app(self, handler: Callable[..., Any] = counter, **options: Any) -> SessionMiddleware:
        options.setdefault("store", self.store)
        options.setdefault("now", self.clock)
        return wsgi(text_app(handler), **options)

    def test_requests_outside_the_cookie_path_get_no_session(self) -> None:
        seen: list[bool] = []

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            seen.append(bs.ENVIRON_KEY in environ)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b""]
        middleware = wsgi(app, cookie={"path": "/app"}, store=self.store)
        client = Client(middleware)
        self.assertIsNone(client.request("/other").session_cookie())
        self.assertIsNotNone(client.request("/app/page").session_cookie())
        client.request("/page", environ={"SCRIPT_NAME": "/app"})  # the same session, loaded
        self.assertEqual(seen, [False, True, True])
        self.assertEqual(self.store.kinds(), ["set", "get", "update"])

    def test_session_changed_after_start_response_is_committed(self) -> None:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            get_session(environ)["late"] = True
            return [b"ok"]
        middleware = wsgi(app, store=self.store, save_uninitialized=False)
        response = Client(middleware).request()
        self.assertIsNotNone(response.session_cookie())
        self.assertEqual(self.store.documents[-1]["late"], True)

    def test_streaming_body_commits_at_first_chunk_and_saves_later_changes_at_close(self) -> None:
        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            session = get_session(environ)
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b""
            session["before"] = 1      # before the first non-empty chunk: decides the cookie
            yield b"first"
            session["after"] = 2       # while streaming: saved at close
            yield b"second"
        middleware = wsgi(app, store=self.store, save_uninitialized=False)
        client = Client(middleware)
        response = client.request()
        self.assertEqual(response.body, b"firstsecond")
        self.assertIsNotNone(response.session_cookie())
        self.assertEqual(self.store.kinds(), ["set", "set"])
        stored = self.store.inner.get(sid_of(response.session_cookie()))
        self.assertEqual((stored["before"], stored["after"]), (1, 2))

    def test_write_callable_commits_first(self) -> None:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            get_session(environ)["written"] = True
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            write(b"via write")
            return []
        response = Client(wsgi(app, store=self.store, save_uninitialized=False)).request()
        self.assertEqual(response.body, b"via write")
        self.assertIsNotNone(response.session_cookie())
        self.assertEqual(self.store.documents[-1]["written"], True)

    def test_changes_after_write_are_saved_when_a_list_follows(self) -> None:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            session = get_session(environ)
            session["before"] = 1
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            write(b"hello, ")          # commits: headers and the session as it is now
            session["after"] = 2       # after the commit: saved when the app returns
            return [b"world"]
        client = Client(wsgi(app, store=self.store, save_uninitialized=False))
        response = client.request()
        self.assertEqual(response.body, b"hello, world")
        stored = self.store.inner.get(sid_of(response.session_cookie()))
        self.assertEqual((stored["before"], stored["after"]), (1, 2))

    def test_empty_generator_body_commits_at_its_end(self) -> None:
        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            get_session(environ)["x"] = 1
            start_response("204 No Content", [])
            return iter([])
        response = Client(wsgi(app, store=self.store, save_uninitialized=False)).request()
        self.assertEqual(response.code, 204)
        self.assertIsNotNone(response.session_cookie())

    def test_store_error_at_commit_fails_the_request(self) -> None:
        class BrokenStore(RecordingStore):
            def set(self, sid: str, session: dict[str, Any], max_age: int | None = None) -> None:
                raise OSError("disk full")
        with self.assertRaisesRegex(OSError, "disk full"):
            Client(self.app(counter, store=BrokenStore())).request()
        # Through a real server: a 500, not a 200 with the data lost.
        with LiveServer(self.app(counter, store=BrokenStore())) as live:
            opener, _ = browser()
            self.assertEqual(fetch(opener, live.url + "/")[0], 500)

    def test_exception_while_streaming_drops_later_changes(self) -> None:
        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            session = get_session(environ)
            session["a"] = 1
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"x"
            session["b"] = 2
            raise RuntimeError("stream broke")
        with self.assertRaisesRegex(RuntimeError, "stream broke"):
            Client(wsgi(app, store=self.store)).request()
        self.assertEqual(self.store.kinds(), ["set"])
        self.assertNotIn("b", self.store.documents[-1])

    def test_deliberate_error_status_is_committed(self) -> None:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            get_session(environ)["failed_attempts"] = 1
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"no"]
        response = Client(wsgi(app, store=self.store)).request()
        self.assertEqual(response.code, 401)
        self.assertIsNotNone(response.session_cookie())
        self.assertEqual(self.store.documents[-1]["failed_attempts"], 1)

    def test_error_page_after_exc_info_is_committed(self) -> None:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            get_session(environ)["x"] = 1
            start_response("200 OK", [("Content-Type", "text/plain")])
            try:
                raise KeyError("oops")
            except KeyError:
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
            return [b"error page"]
        response = Client(wsgi(app, store=self.store)).request()
        self.assertEqual(response.status, "500 Internal Server Error")
        self.assertIsNotNone(response.session_cookie())

    def test_file_wrapper_body_is_passed_through_untouched(self) -> None:
        returned: list[Any] = []

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            get_session(environ)["downloaded"] = True
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            body = environ["wsgi.file_wrapper"](io.BytesIO(b"file contents"))
            returned.append(body)
            return body
        middleware = wsgi(app, store=self.store)
        env: dict[str, Any] = {}
        setup_testing_defaults(env)
        env["wsgi.file_wrapper"] = FileWrapper
        headers: list[Any] = []
        body = middleware(env, lambda status, h, exc_info=None: headers.extend(h))
        self.assertIs(body, returned[0])
        self.assertTrue(any(name == "Set-Cookie" for name, _ in headers))
        self.assertEqual(b"".join(body), b"file contents")
        self.assertEqual(self.store.documents[-1]["downloaded"], True)

    def test_app_headers_and_other_set_cookies_are_kept(self) -> None:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            get_session(environ)["x"] = 1
            start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "theme=dark; Path=/"), ("X-App", "1")])
            return [b"ok"]
        response = Client(wsgi(app, store=self.store)).request()
        self.assertIn(("X-App", "1"), response.headers)
        self.assertEqual(len(response.set_cookies()), 2)
        self.assertEqual(response.set_cookies()[0], "theme=dark; Path=/")

    def test_one_warning_for_a_memory_store_under_a_multi_process_server(self) -> None:
        app = wsgi(text_app(counter))
        with self.assertLogs("bunway_session", logging.WARNING) as logs:
            for _ in range(3):
                Client(app).request(environ={"wsgi.multiprocess": True})
        self.assertEqual(len(logs.records), 1)
        self.assertIn("MemoryStore under a multi-process server: each process has its own sessions",
                      logs.output[0])

    def test_no_warning_for_shared_stores_or_single_process(self) -> None:
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logger = logging.getLogger("bunway_session")
        logger.addHandler(handler)
        try:
            with tempfile.TemporaryDirectory() as folder:
                Client(wsgi(text_app(counter), store=FileStore(folder), secret=LONG_SECRET)).request(
                    environ={"wsgi.multiprocess": True})
            Client(wsgi(text_app(counter), secret=LONG_SECRET)).request()
        finally:
            logger.removeHandler(handler)
        self.assertEqual(records, [])

    def test_end_to_end_login_flow_through_a_real_server(self) -> None:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            session = get_session(environ)
            path = environ["PATH_INFO"]
            status, body = "200 OK", b""
            if path == "/login":
                session.regenerate()
                session["user_id"] = 7
                body = b"logged in"
            elif path == "/me":
                if "user_id" not in session:
                    status, body = "401 Unauthorized", b"who are you"
                else:
                    body = str(session["user_id"]).encode()
            elif path == "/logout":
                session.destroy()
                body = b"bye"
            start_response(status, [("Content-Type", "text/plain")])
            return [body]
        with LiveServer(SessionMiddleware(app, secret=SECRET, store=self.store.inner)) as live:
            opener, jar = browser()
            self.assertEqual(fetch(opener, live.url + "/me")[0], 401)
            before = {c.name: c.value for c in jar}["connect.sid"]
            self.assertEqual(fetch(opener, live.url + "/login"), (200, "logged in"))
            after = {c.name: c.value for c in jar}["connect.sid"]
            self.assertNotEqual(before, after)
            self.assertIsNone(self.store.inner.get(sid_of("x=" + before)))
            self.assertEqual(fetch(opener, live.url + "/me"), (200, "7"))
            self.assertEqual(fetch(opener, live.url + "/logout"), (200, "bye"))
            self.assertEqual(list(jar), [])  # the expired cookie removed it
            self.assertIsNone(self.store.inner.get(sid_of("x=" + after)))
            self.assertEqual(fetch(opener, live.url + "/me")[0], 401)


def jar_header(client: Client) -> str:
    return "; ".join(f"{k}={v}" for k, v in client.cookies.items())


def sid_of_jar(client: Client) -> str:
    return sid_of("x=" + client.cookies["connect.sid"])


# ---------------------------------------------------------------------------
# §5 The session object
# ---------------------------------------------------------------------------

class SessionObjectTests(EitherWrapper):
    """Section 5, for each wrapper."""

    def test_id_cookie_and_is_new(self) -> None:
        seen: list[tuple[str, bool, SessionCookie]] = []
        client = self.client(lambda s, e: seen.append((s.id, s.is_new, s.cookie)) or counter(s, e))
        client.request()
        client.request()
        (first_id, first_new, cookie), (second_id, second_new, _) = seen
        self.assertEqual((first_new, second_new), (True, False))
        self.assertEqual(first_id, second_id)
        self.assertEqual(first_id, sid_of_jar(client))
        self.assertEqual((cookie.original_max_age, cookie.path, cookie.http_only, cookie.same_site),
                         (86_400_000, "/", True, "lax"))

    def test_cookie_is_a_reserved_key(self) -> None:
        def handler(session: Session, environ: dict[str, Any]) -> str:
            with self.assertRaisesRegex(KeyError, "reserved"):
                session["cookie"] = 1
            with self.assertRaisesRegex(KeyError, "reserved"):
                session.update({"cookie": 1})
            with self.assertRaisesRegex(TypeError, "keys must be str"):
                session[1] = "x"  # type: ignore[index]
            return "ok"
        self.assertEqual(self.client(handler).request().body, b"ok")

    def test_unserializable_value_fails_the_request_and_keeps_the_stored_session(self) -> None:
        client = self.client(counter)
        client.request()
        before = self.store.inner.get(sid_of_jar(client))

        def handler(session: Session, environ: dict[str, Any]) -> str:
            session["views"] = 99
            session["when"] = datetime.now()
            return "ok"
        bad = self.client(handler)
        bad.cookies = client.cookies
        with self.assertRaisesRegex(TypeError, r"session\['when'\] cannot be stored.*datetime"):
            bad.request()
        self.assertEqual(self.store.inner.get(sid_of_jar(client)), before)
        nan = self.client(lambda s, e: s.update(score=float("nan")))
        with self.assertRaisesRegex(TypeError, r"session\['score'\]"):
            nan.request()
        loop: dict[str, Any] = {}
        loop["self"] = loop
        circular = self.client(lambda s, e: s.update(graph=loop))
        with self.assertRaisesRegex(TypeError, r"session\['graph'\] cannot be stored: it contains itself"):
            circular.request()

    def test_regenerate_gives_the_same_object_a_new_id_no_data_and_a_new_cookie(self) -> None:
        client = self.client(counter, cookie={"max_age": 60_000})
        client.request()
        old_id = sid_of_jar(client)
        results: dict[str, Any] = {}

        def handler(session: Session, environ: dict[str, Any]) -> str:
            session.cookie.max_age = 5
            session.regenerate()
            results.update(same=session is get_session(environ), id=session.id, data=dict(session),
                           max_age=session.cookie.original_max_age, new=session.is_new)
            session["user"] = "alice"
            return "ok"
        login = self.client(handler, cookie={"max_age": 60_000})
        login.cookies = client.cookies
        response = login.request()
        self.assertTrue(results["same"])
        self.assertNotEqual(results["id"], old_id)
        self.assertEqual((results["data"], results["max_age"], results["new"]), ({}, 60_000, True))
        self.assertIsNone(self.store.inner.get(old_id))
        self.assertEqual(sid_of(response.session_cookie()), results["id"])
        self.assertEqual(self.store.inner.get(results["id"])["user"], "alice")

    def test_cycle_id_keeps_the_data_and_cookie_under_a_new_id(self) -> None:
        client = self.client(counter, cookie={"max_age": 60_000})
        client.request()
        old_id = sid_of_jar(client)
        results: dict[str, Any] = {}

        def handler(session: Session, environ: dict[str, Any]) -> str:
            session.cycle_id()
            results.update(id=session.id, data=dict(session), new=session.is_new,
                           max_age=session.cookie.original_max_age)
            session["user"] = "alice"
            return "ok"
        login = self.client(handler, cookie={"max_age": 60_000})
        login.cookies = client.cookies
        response = login.request()
        self.assertNotEqual(results["id"], old_id)
        self.assertEqual((results["data"], results["new"], results["max_age"]), ({"views": 1}, False, 60_000))
        self.assertIsNone(self.store.inner.get(old_id), "the old ID must leave the store")
        self.assertEqual(sid_of(response.session_cookie()), results["id"])
        stored = self.store.inner.get(results["id"])
        self.assertEqual((stored["views"], stored["user"]), (1, "alice"))

    def test_login_key_gives_a_new_id_when_set_or_changed_only(self) -> None:
        def login_as(user: str | None) -> Callable[[Session, dict[str, Any]], str]:
            def handler(session: Session, environ: dict[str, Any]) -> str:
                if user is None:
                    session.pop("_user_id", None)
                else:
                    session["_user_id"] = user
                session["seen"] = session.get("seen", 0) + 1
                return "ok"
            return handler

        def visit(handler: Any, login_key: Any = "_user_id") -> tuple[str, str]:
            """(the ID before the request, the ID the client holds after it)."""
            before = sid_of_jar(client)
            app = self.client(handler, login_key=login_key)
            app.cookies = client.cookies
            app.request()
            return before, sid_of_jar(app)

        client = self.client(counter)
        client.request()
        before, after = visit(login_as("alice"))
        self.assertNotEqual(before, after, "setting the login key is a login: a new ID")
        self.assertIsNone(self.store.inner.get(before))
        self.assertEqual(self.store.inner.get(after)["views"], 1, "the data is kept")
        self.assertEqual(visit(login_as("alice"))[1], after, "the same user again: no new ID")
        before, after = visit(login_as("bob"))
        self.assertNotEqual(before, after, "another user: a new ID")
        self.assertEqual(visit(login_as(None))[1], after, "a removed key (a logout) keeps the ID")
        self.assertEqual(visit(login_as("carol"), login_key=None)[1], after, "login_key=None turns it off")
        with self.assertRaisesRegex(TypeError, "login_key must be"):
            self.wrap(counter, secret=SECRET, login_key=3)

    def test_destroy_deletes_expires_the_cookie_and_refuses_writes(self) -> None:
        client = self.client(counter, cookie={"domain": "example.com"})
        client.request()
        sid = sid_of_jar(client)

        def handler(session: Session, environ: dict[str, Any]) -> str:
            session.destroy()
            writes: dict[str, Callable[[], Any]] = {
                "setitem": lambda: session.__setitem__("x", 1), "delitem": lambda: session.__delitem__("views"),
                "pop": lambda: session.pop("views", None), "popitem": session.popitem,
                "setdefault": lambda: session.setdefault("x", 1), "update": lambda: session.update(x=1),
                "ior": lambda: session.__ior__({"x": 1}), "clear": session.clear, "save": session.save,
                "touch": session.touch, "flash": lambda: session.flash("info", "x"), "reload": session.reload}
            for name, write in writes.items():
                with self.subTest(write=name), self.assertRaisesRegex(RuntimeError, r"regenerate\(\)"):
                    write()
            return str(dict(session))
        destroyer = self.client(handler, cookie={"domain": "example.com"})
        destroyer.cookies = client.cookies
        response = destroyer.request()
        self.assertEqual(response.body, b"{}")
        self.assertIsNone(self.store.inner.get(sid))
        self.assertEqual(response.session_cookie(), "connect.sid=; Domain=example.com; Path=/; "
                                                    "Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax")
        self.assertEqual(destroyer.cookies, {})

    def test_regenerate_after_destroy_starts_a_new_session(self) -> None:
        def handler(session: Session, environ: dict[str, Any]) -> str:
            session.destroy()
            session.regenerate()
            session["fresh"] = True
            return session.id
        response = self.client(handler).request()
        self.assertEqual(sid_of(response.session_cookie()), response.body.decode())
        self.assertEqual(self.store.inner.get(response.body.decode())["fresh"], True)

    def test_reload_replaces_the_data_from_the_store(self) -> None:
        client = self.client(counter)
        client.request()
        sid = sid_of_jar(client)

        def handler(session: Session, environ: dict[str, Any]) -> Any:
            session["views"] = 50
            other = self.store.inner.get(sid)
            other["views"] = 7
            other["extra"] = "from elsewhere"
            self.store.inner.set(sid, other)
            session.reload()
            return dict(session)
        reloader = self.client(handler)
        reloader.cookies = client.cookies
        self.assertEqual(reloader.request().body, b"{'views': 7, 'extra': 'from elsewhere'}")

    def test_reload_of_a_session_the_store_lost_is_an_error(self) -> None:
        def handler(session: Session, environ: dict[str, Any]) -> str:
            with self.assertRaisesRegex(LookupError, "no longer in the store"):
                session.reload()
            return "ok"
        self.assertEqual(self.client(handler).request().body, b"ok")

    def test_save_writes_now_and_the_end_of_request_save_is_skipped(self) -> None:
        written: list[Any] = []

        def handler(session: Session, environ: dict[str, Any]) -> str:
            session["step"] = 1
            session.save()
            written.append(self.store.inner.get(session.id)["step"])
            return "ok"
        self.client(handler).request()
        self.assertEqual(written, [1])
        self.assertEqual(self.store.kinds(), ["set"])

        def changes_again(session: Session, environ: dict[str, Any]) -> str:
            session["step"] = 1
            session.save()
            session["step"] = 2
            return "ok"
        self.store.calls.clear()
        response = self.client(changes_again).request()
        self.assertEqual(self.store.kinds(), ["set", "set"])
        self.assertEqual(self.store.inner.get(sid_of(response.session_cookie()))["step"], 2)

    def test_touch_and_max_age_remember_me(self) -> None:
        seen: list[Any] = []

        def handler(session: Session, environ: dict[str, Any]) -> str:
            cookie = session.cookie
            seen.append(cookie.max_age)
            self.clock.advance(10_000)
            seen.append(cookie.max_age)
            session.touch()
            seen.append(cookie.max_age)
            cookie.max_age = timedelta(days=30)
            seen.append((cookie.max_age, cookie.original_max_age))
            return "ok"
        response = self.client(handler).request()
        self.assertEqual(seen, [86_400_000, 86_390_000, 86_400_000, (2_592_000_000, 2_592_000_000)])
        self.assertIn(bs._http_date(int(self.clock() * 1000) + 2_592_000_000), response.session_cookie())

    def test_cookie_expires_is_settable_and_must_be_aware(self) -> None:
        def handler(session: Session, environ: dict[str, Any]) -> str:
            with self.assertRaisesRegex(TypeError, "timezone-aware"):
                session.cookie.expires = datetime(2030, 1, 1)
            session.cookie.expires = datetime.fromtimestamp(self.clock() + 3600, UTC)
            return str(session.cookie.original_max_age)
        self.assertEqual(self.client(handler).request().body, b"3600000")

    def test_session_dict_methods(self) -> None:
        def handler(session: Session, environ: dict[str, Any]) -> Any:
            session.update({"a": 1}, b=2)
            session.setdefault("c", 3)
            session |= {"d": 4}
            del session["a"]
            popped = session.pop("b")
            return (popped, dict(session), repr(session).startswith("Session(id="))
        self.assertEqual(self.client(handler).request().body, b"(2, {'c': 3, 'd': 4}, True)")


class TestSessionObjectWSGI(UnderWSGI, SessionObjectTests, unittest.TestCase):
    pass


class TestSessionObjectASGI(UnderASGI, SessionObjectTests, unittest.TestCase):
    pass


class TestSessionObjectWSGIMemoryStore(OnMemoryStore, UnderWSGI, SessionObjectTests, unittest.TestCase):
    pass


class TestSessionObjectASGIMemoryStore(OnMemoryStore, UnderASGI, SessionObjectTests, unittest.TestCase):
    pass


class TestFlash(unittest.TestCase):
    def test_flash_add_read_and_clear(self) -> None:
        results: list[Any] = []

        def handler(session: Session, environ: dict[str, Any]) -> str:
            results.append(session.flash("info", "saved"))
            results.append(session.flash("info", ["one", "two"]))
            results.append(session.flash("error", "bad"))
            results.append(json.loads(json.dumps(session)))
            results.append(session.flash("info"))
            results.append(session.flash("info"))
            results.append(session.flash("missing"))
            results.append(session.flash())
            results.append(session.flash())
            results.append("flash" in session)
            return "ok"
        Client(wsgi(text_app(handler))).request()
        self.assertEqual(results, [
            1, 3, 1, {"flash": {"info": ["saved", "one", "two"], "error": ["bad"]}},
            ["saved", "one", "two"], [], [], {"error": ["bad"]}, {}, False])

    def test_flash_survives_a_redirect_and_is_shown_once(self) -> None:
        def handler(session: Session, environ: dict[str, Any]) -> Any:
            if environ["PATH_INFO"] == "/post":
                return session.flash("info", "Saved!")
            return session.flash("info")
        client = Client(wsgi(text_app(handler)))
        self.assertEqual(client.request("/post").body, b"1")
        self.assertEqual(client.request("/show").body, b"['Saved!']")
        self.assertEqual(client.request("/show").body, b"[]")

    def test_flash_message_must_be_text(self) -> None:
        def handler(session: Session, environ: dict[str, Any]) -> str:
            with self.assertRaisesRegex(TypeError, "str or a list of str"):
                session.flash("info", 42)  # type: ignore[arg-type]
            return "ok"
        self.assertEqual(Client(wsgi(text_app(handler))).request().body, b"ok")

    def test_flash_reads_connect_flash_messages_and_tolerates_garbage(self) -> None:
        clock = Clock()  # the fixture's moment: its session expires a day later
        store = MemoryStore(now=clock)
        document = json.loads(EXPRESS_DOCUMENT)
        store.set("node-flash", document)
        client = Client(wsgi(text_app(lambda s, e: s.flash("info")), store=store, now=clock))
        client.cookies["connect.sid"] = urllib.parse.quote("s:" + sign("node-flash", SECRET))
        self.assertEqual(client.request().body, b"['hi']")
        self.assertNotIn("flash", store.get("node-flash"))
        document["flash"] = "not a dict"
        store.set("node-flash", document)
        self.assertEqual(client.request().body, b"[]")


# ---------------------------------------------------------------------------
# §9 ASGI: the wrapper, its response, where store calls run
# ---------------------------------------------------------------------------

async def send_text(send: Any, body: bytes = b"ok", headers: list[tuple[bytes, bytes]] | None = None,
                    status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


class RecordingSend:
    """An ASGI server's send: records each message, and calls `on` (if given) as it arrives."""

    def __init__(self, on: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.on = on

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.on is not None:
            self.on(message)
        self.messages.append(message)

    def types(self) -> list[str]:
        return [message["type"] for message in self.messages]


async def no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class TestASGI(AsyncTestCase):
    def setUp(self) -> None:
        self.clock = Clock(time.time())
        self.store = RecordingStore(MemoryStore(now=self.clock))

    def middleware(self, app: Any, **options: Any) -> ASGISessionMiddleware:
        options.setdefault("store", self.store)
        options.setdefault("now", self.clock)
        return asgi(app, **options)

    async def started_session(self, **options: Any) -> tuple[ASGISessionMiddleware, str, str]:
        """A wrapper around a counter app, and a session it stored: (wrapper, cookie header, sid)."""
        app = self.middleware(asgi_text_app(counter), **options)
        client = ASGIClient(app)
        await client.arequest()
        return app, jar_header(client), sid_of_jar(client)

    async def test_the_session_is_in_the_scope_under_both_keys(self) -> None:
        seen: list[Any] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            seen.extend([scope["bunway.session"], scope["session"], get_session(scope)])
            await send_text(send)
        await ASGIClient(self.middleware(app)).arequest()
        self.assertIsInstance(seen[0], Session)
        self.assertIs(seen[0], seen[1])
        self.assertIs(seen[0], seen[2])

    async def test_another_middlewares_scope_session_is_kept_and_one_warning_logged(self) -> None:
        seen: list[Any] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            seen.append((scope["session"], scope["bunway.session"]))
            await send_text(send)
        wrapped = self.middleware(app)

        async def outer(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await wrapped({**scope, "session": {"from": "another middleware"}}, receive, send)
        with self.assertLogs("bunway_session", logging.WARNING) as logs:
            for _ in range(3):
                await ASGIClient(outer).arequest()
        self.assertEqual(len(logs.records), 1)
        self.assertIn("scope['session'] was already set by another middleware", logs.output[0])
        self.assertEqual(seen[0][0], {"from": "another middleware"})
        self.assertIsInstance(seen[0][1], Session)

    async def test_the_start_is_held_until_the_first_body_and_carries_the_set_cookie(self) -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            session = get_session(scope)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain"), (b"set-cookie", b"theme=dark; Path=/")]})
            session["after_start"] = True   # still before the commit
            await send({"type": "http.response.body", "body": b"", "more_body": True})   # nothing yet
            await send({"type": "http.response.body", "body": b"hello", "more_body": False})
        send = RecordingSend()
        await self.middleware(app, save_uninitialized=False)(http_scope(), no_body, send)
        self.assertEqual(send.types(), ["http.response.start", "http.response.body"])
        headers = send.messages[0]["headers"]
        self.assertEqual(headers[:2], [(b"content-type", b"text/plain"), (b"set-cookie", b"theme=dark; Path=/")])
        self.assertEqual(len(headers), 3)
        self.assertTrue(headers[2][1].startswith(b"connect.sid=s%3A"))
        sid = sid_of(headers[2][1].decode("latin-1"))
        self.assertEqual(self.store.inner.get(sid)["after_start"], True)

    async def test_changes_while_streaming_are_saved_before_the_last_body_goes_out(self) -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            session = get_session(scope)
            session["before"] = 1
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            session["during"] = 2            # after the commit: saved before the last body
            await send({"type": "http.response.body", "body": b"last", "more_body": False})
            session["after_the_end"] = 3     # too late: the response is over
        stored_when_last_body_left: list[Any] = []

        def on(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                stored_when_last_body_left.append(self.store.inner.get(sid))
        send = RecordingSend(on)
        sid = ""

        def remember_sid(message: dict[str, Any]) -> None:
            nonlocal sid
            if message["type"] == "http.response.start":
                sid = sid_of(dict(message["headers"])[b"set-cookie"].decode("latin-1"))
            on(message)
        send.on = remember_sid
        await self.middleware(app)(http_scope(), no_body, send)
        stored = stored_when_last_body_left[0]
        self.assertEqual((stored["before"], stored["during"]), (1, 2))
        self.assertNotIn("after_the_end", self.store.inner.get(sid))
        self.assertEqual(self.store.kinds(), ["set", "set"])

    async def test_an_exception_before_the_start_drops_the_changes(self) -> None:
        _, cookie, sid = await self.started_session()

        async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
            get_session(scope)["views"] = 100
            raise ValueError("boom")
        self.store.calls.clear()
        send = RecordingSend()
        with self.assertRaisesRegex(ValueError, "boom"):
            await self.middleware(failing)(http_scope(headers={"Cookie": cookie}), no_body, send)
        self.assertEqual((send.messages, self.store.kinds()), ([], ["get"]))
        self.assertEqual(self.store.inner.get(sid)["views"], 1)

    async def test_an_exception_while_streaming_drops_later_changes(self) -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            session = get_session(scope)
            session["a"] = 1
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            session["b"] = 2
            raise RuntimeError("stream broke")
        with self.assertRaisesRegex(RuntimeError, "stream broke"):
            await self.middleware(app)(http_scope(), no_body, RecordingSend())
        self.assertEqual(self.store.kinds(), ["set"])
        self.assertEqual(self.store.documents[-1]["a"], 1)
        self.assertNotIn("b", self.store.documents[-1])

    async def test_a_store_error_at_commit_is_raised_before_anything_is_sent(self) -> None:
        class BrokenStore(RecordingStore):
            def set(self, sid: str, session: dict[str, Any], max_age: int | None = None) -> None:
                raise OSError("disk full")
        send = RecordingSend()
        with self.assertRaisesRegex(OSError, "disk full"):
            await self.middleware(asgi_text_app(counter), store=BrokenStore())(http_scope(), no_body, send)
        self.assertEqual(send.messages, [])

    async def test_a_deliberate_error_status_is_committed(self) -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            get_session(scope)["failed_attempts"] = 1
            await send_text(send, b"no", status=401)
        response = await ASGIClient(self.middleware(app)).arequest()
        self.assertEqual(response.code, 401)
        self.assertEqual(self.store.inner.get(sid_of(response.session_cookie()))["failed_attempts"], 1)

    async def test_response_extensions_commit_first(self) -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            get_session(scope)["downloaded"] = True
            await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
            await send({"type": "http.response.pathsend", "path": "/etc/hostname"})
        send = RecordingSend()
        await self.middleware(app)(http_scope(), no_body, send)
        self.assertEqual(send.types(), ["http.response.start", "http.response.pathsend"])
        self.assertIn(b"set-cookie", dict(send.messages[0]["headers"]))
        self.assertTrue(send.messages[0]["trailers"])

        async def with_trailers(scope: dict[str, Any], receive: Any, send: Any) -> None:
            session = get_session(scope)
            await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            session["late"] = 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await send({"type": "http.response.trailers", "headers": [], "more_trailers": False})
        send = RecordingSend()
        await self.middleware(with_trailers)(http_scope(), no_body, send)
        self.assertEqual(send.types(), ["http.response.start", "http.response.body", "http.response.body",
                                        "http.response.trailers"])
        self.assertEqual(self.store.documents[-1]["late"], 1)

    async def test_lifespan_and_unknown_scopes_pass_through_untouched(self) -> None:
        seen: list[Any] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            seen.append((scope, receive, send))
        wrapped = self.middleware(app)
        for scope_type in ("lifespan", "webtransport"):
            scope = {"type": scope_type, "asgi": {"version": "3.0"}}
            send = RecordingSend()
            await wrapped(scope, no_body, send)
            self.assertIs(seen[-1][0], scope)
            self.assertIs(seen[-1][1], no_body)
            self.assertIs(seen[-1][2], send)
        self.assertEqual(self.store.calls, [])

    async def test_the_cookie_path_is_matched_against_root_path_and_path(self) -> None:
        seen: list[bool] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            seen.append("bunway.session" in scope)
            await send_text(send)
        wrapped = self.middleware(app, cookie={"path": "/app/admin"})   # an app mounted at /app
        cases = [({"path": "/app/admin/users", "root_path": "/app"}, True),  # uvicorn: path includes root_path
                 ({"path": "/admin/users", "root_path": "/app"}, True),      # older servers: it does not
                 ({"path": "/app/admin", "root_path": ""}, True),
                 ({"path": "/app/other", "root_path": "/app"}, False),
                 ({"path": "/admin/users", "root_path": ""}, False)]
        for scope, expected in cases:
            with self.subTest(scope=scope):
                seen.clear()
                response = await ASGIClient(wrapped).arequest(scope["path"], scope={"root_path": scope["root_path"]})
                self.assertEqual(seen, [expected])
                self.assertEqual(response.session_cookie() is not None, expected)

    async def test_secure_requests_https_wss_and_the_proxy(self) -> None:
        auto = self.middleware(asgi_text_app(counter), cookie={"secure": "auto", "same_site": "auto"})
        secure = (await ASGIClient(auto).arequest(https=True)).session_cookie() or ""
        self.assertTrue(secure.endswith("; HttpOnly; Secure; SameSite=None"), secure)
        plain = (await ASGIClient(auto).arequest()).session_cookie() or ""
        self.assertTrue(plain.endswith("; HttpOnly; SameSite=Lax"), plain)
        forwarded = {"X-Forwarded-Proto": "https, http"}
        trusting = self.middleware(asgi_text_app(counter), cookie={"secure": True}, proxy=True)
        self.assertIsNotNone((await ASGIClient(trusting).arequest(headers=forwarded)).session_cookie())
        for proxy in (None, False):
            untrusting = self.middleware(asgi_text_app(counter), cookie={"secure": True}, proxy=proxy)
            self.assertIsNone((await ASGIClient(untrusting).arequest(headers=forwarded)).session_cookie())
        self.assertTrue(bs._scope_is_secure({"scheme": "wss"}, None))
        self.assertTrue(bs._scope_is_secure({"scheme": "ws", "headers": [(b"x-forwarded-proto", b"wss")]}, True))
        self.assertFalse(bs._scope_is_secure({"scheme": "ws", "headers": [(b"x-forwarded-proto", b"wss")]}, None))

    async def test_genid_and_a_cookie_callable_receive_the_scope(self) -> None:
        seen: list[Any] = []

        def genid(scope: dict[str, Any]) -> str:
            seen.append(scope["type"])
            return "scope-made-id"

        def cookie(scope: dict[str, Any]) -> dict[str, Any]:
            return {"domain": dict(scope["headers"])[b"host"].decode()}
        response = await ASGIClient(self.middleware(asgi_text_app(counter), genid=genid, cookie=cookie)).arequest()
        self.assertEqual(sid_of(response.session_cookie()), "scope-made-id")
        self.assertIn("; Domain=testserver; ", response.session_cookie())
        self.assertEqual(seen, ["http"])

    async def test_several_cookie_headers_are_read_as_one(self) -> None:
        _, cookie, sid = await self.started_session()
        seen: list[str] = []
        app = self.middleware(asgi_text_app(lambda s, e: seen.append(s.id) or "ok"))
        headers = [(b"cookie", f"other{n}=x".encode()) for n in range(1000)] + [(b"cookie", cookie.encode())]
        scope = http_scope()
        scope["headers"] = headers
        await app(scope, no_body, RecordingSend())
        self.assertEqual(seen, [sid])
        self.assertEqual(bs._scope_cookie_header({"headers": [(b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")]}),
                         "a=1; b=2")

    async def test_regenerate_and_destroy_delete_the_old_id_at_once(self) -> None:
        _, cookie, sid = await self.started_session()
        during: list[Any] = []

        def login(session: Session, scope: dict[str, Any]) -> str:
            session.regenerate()
            during.append(self.store.inner.get(sid))   # a store that never blocks: called inline
            session["user"] = "alice"
            return session.id
        response = await ASGIClient(self.middleware(asgi_text_app(login))).arequest(cookie=cookie)
        new_id = response.body.decode()
        self.assertEqual(during, [None])
        self.assertEqual(self.store.inner.get(new_id)["user"], "alice")

        async def logout(session: Session, scope: dict[str, Any]) -> str:
            session.destroy()   # a store that blocks: the deletion runs as a task of its own
            await asyncio.sleep(0)
            during.append(store.get(sid_of_jar(client)))
            return "bye"
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        store = FileStore(folder, now=self.clock)
        client = ASGIClient(self.middleware(asgi_text_app(counter), store=store))
        await client.arequest()
        response = await ASGIClient(self.middleware(asgi_text_app(logout), store=store)).arequest(
            cookie=jar_header(client))
        self.assertIsNone(store.get(sid_of_jar(client)))
        self.assertIn("Expires=Thu, 01 Jan 1970", response.session_cookie() or "")

    async def test_a_logout_is_final_when_the_app_raises_is_cancelled_or_sends_no_body(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        stores = {"inline": self.store.inner, "on a worker thread": FileStore(folder, now=self.clock),
                  "async": AsyncDictStore()}
        for kind, store in stores.items():
            for ending in ("raises", "is cancelled", "sends no body"):
                with self.subTest(store=kind, ending=ending):
                    client = ASGIClient(self.middleware(asgi_text_app(counter), store=store))
                    await client.arequest()
                    sid = sid_of_jar(client)
                    blocked = asyncio.Event()

                    async def logout(scope: dict[str, Any], receive: Any, send: Any, ending: str = ending,
                                     blocked: asyncio.Event = blocked) -> None:
                        get_session(scope).destroy()
                        if ending == "raises":
                            raise RuntimeError("logout handler failed")
                        if ending == "is cancelled":
                            blocked.set()
                            await asyncio.Event().wait()   # until cancelled (a timeout, a disconnect)
                        await send({"type": "http.response.start", "status": 200, "headers": []})
                    request = asyncio.ensure_future(
                        ASGIClient(self.middleware(logout, store=store)).arequest(cookie=jar_header(client)))
                    if ending == "is cancelled":
                        await asyncio.wait_for(blocked.wait(), 30)
                        request.cancel()
                    await asyncio.wait([request], timeout=30)
                    self.assertTrue(request.done())
                    if not request.cancelled():
                        self.assertIsNotNone(request.exception())  # (raised, or no response to read)
                    if bs._DELETIONS:
                        await asyncio.wait(list(bs._DELETIONS), timeout=30)
                    getter = getattr(store, "aget", None)
                    stored = await getter(sid) if getter else store.get(sid)
                    self.assertIsNone(stored, "the logged-out session must leave the store")

    async def test_sync_save_and_reload_from_the_loop_and_from_a_worker_thread(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        store = FileStore(folder, now=self.clock)   # may block: the loop's thread must not wait on it
        app = self.middleware(asgi_text_app(counter), store=store)
        client = ASGIClient(app)
        await client.arequest()

        async def on_the_loop(session: Session, scope: dict[str, Any]) -> str:
            session["x"] = 1
            with self.assertRaisesRegex(RuntimeError, r"session.save\(\) on the event loop would block it with "
                                        r"FileStore: use 'await session.asave\(\)'"):
                session.save()
            with self.assertRaisesRegex(RuntimeError, r"await session.areload\(\)"):
                session.reload()
            await session.asave()
            self.assertEqual(store.get(session.id)["x"], 1)
            # A sync view runs on a worker thread, where the sync methods wait for the store.
            await asyncio.get_running_loop().run_in_executor(None, lambda: (session.update(y=2), session.save()))
            self.assertEqual(store.get(session.id)["y"], 2)
            store.set(session.id, {**store.get(session.id), "z": 3})
            await session.areload()
            return sorted(session)
        response = await ASGIClient(self.middleware(asgi_text_app(on_the_loop), store=store)).arequest(
            cookie=jar_header(client))
        self.assertEqual(response.body, b"['views', 'x', 'y', 'z']")

    async def test_store_calls_run_where_they_should(self) -> None:
        loop_thread = threading.get_ident()
        threads: dict[str, set[str]] = {}

        def note(kind: str) -> None:
            threads.setdefault(kind, set()).add("loop" if threading.get_ident() == loop_thread else "worker")

        class Inline(RecordingStore):   # blocking = False: called on the loop's thread
            def get(self, sid: str) -> Any:
                note("inline")
                return super().get(sid)

        class Blocking(RecordingStore):  # may block: on a worker thread
            blocking = True

            def get(self, sid: str) -> Any:
                note("blocking")
                return super().get(sid)

        class Twins(RecordingStore):     # async twins: awaited on the loop
            blocking = True

            async def aget(self, sid: str) -> Any:
                note("twin")
                return self.inner.get(sid)

            def get(self, sid: str) -> Any:
                note("sync method of a store with twins")
                return super().get(sid)
        for store in (Inline(), Blocking(), Twins()):
            app = self.middleware(asgi_text_app(counter), store=store)
            client = ASGIClient(app)
            await client.arequest()
            await client.arequest()
        self.assertEqual(threads, {"inline": {"loop"}, "blocking": {"worker"}, "twin": {"loop"}})

    async def test_the_executor_option_runs_blocking_store_calls(self) -> None:
        from concurrent.futures import ThreadPoolExecutor
        executor = ThreadPoolExecutor(1, thread_name_prefix="session-store")
        self.addCleanup(executor.shutdown)
        names: list[str] = []

        class Blocking(RecordingStore):
            blocking = True

            def set(self, sid: str, session: dict[str, Any], max_age: int | None = None) -> None:
                names.append(threading.current_thread().name)
                super().set(sid, session, max_age)
        await ASGIClient(self.middleware(asgi_text_app(counter), store=Blocking(), executor=executor)).arequest()
        self.assertEqual(len(names), 1)
        self.assertTrue(names[0].startswith("session-store"), names)

    async def test_a_file_store_write_does_not_stall_another_request(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        writing, release = threading.Event(), threading.Event()
        self.addCleanup(release.set)   # a failing test must not leave the write waiting

        class SlowDisk(FileStore):
            def set(self, sid: str, session: dict[str, Any], max_age: int | None = None) -> None:
                writing.set()
                if not release.wait(30):
                    raise AssertionError("never released")
                super().set(sid, session, max_age)
        store = SlowDisk(folder, now=self.clock)
        app = self.middleware(asgi_text_app(counter), store=store)
        slow = asyncio.ensure_future(ASGIClient(app).arequest())        # a new visitor: its write hangs
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, writing.wait, 30), 30)
        self.assertFalse(slow.done())
        reading = self.middleware(asgi_text_app(reader), store=store, save_uninitialized=False)
        other = await asyncio.wait_for(ASGIClient(reading).arequest(), 30)   # runs while the write hangs
        self.assertEqual((other.code, slow.done()), (200, False))
        release.set()
        response = await asyncio.wait_for(slow, 30)
        self.assertEqual(store.get(sid_of(response.session_cookie()))["views"], 1)

    async def test_the_same_documents_and_set_cookie_bytes_as_the_wsgi_wrapper(self) -> None:
        def login(session: Session, request: dict[str, Any]) -> str:
            if session.get("views"):
                session.regenerate()
                session["user"] = "alice"
            session["views"] = session.get("views", 0) + 1
            session.flash("info", "hi")
            return "ok"
        results = []
        for wrap, make_client in ((wsgi, Client), (asgi, ASGIClient)):
            clock = Clock()
            store = RecordingStore(MemoryStore(now=clock))
            ids = iter(["Yi0qQ7Ob8Mgk3N1TKNwaHx9tmU-RPf_2", "second-id"])
            handler_app = text_app(login) if wrap is wsgi else asgi_text_app(login)
            client = make_client(wrap(handler_app, store=store, now=clock, genid=lambda request, ids=ids: next(ids),
                                      cookie={"maxAge": 86400000, "sameSite": "lax", "priority": "high",
                                              "partitioned": True, "domain": "example.com"}))
            headers = []
            for _ in range(2):
                response = await client.arequest() if make_client is ASGIClient else client.request()
                headers.append(response.session_cookie())
                clock.advance(1000)
            results.append((headers, [bs._dumps(document) for document in store.documents], store.kinds()))
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0][0][0], EXPRESS_SET_COOKIE)

    async def test_wrappers_given_no_store_share_one_per_process(self) -> None:
        login = asgi(asgi_text_app(lambda s, e: s.update(user="alice") or "in"))
        private = asgi(asgi_text_app(lambda s, e: s.get("user")))   # another wrapper (Litestar: one a route)
        through_wsgi = wsgi(text_app(lambda s, e: s.get("user")))
        self.assertIs(login.store, private.store)
        self.assertIs(login.store, through_wsgi.store)
        client = ASGIClient(login)
        await client.arequest()
        self.assertEqual((await ASGIClient(private).arequest(cookie=jar_header(client))).body, b"alice")
        self.assertEqual(Client(through_wsgi).request(cookie=jar_header(client)).body, b"alice")
        self.assertIsNot(asgi(asgi_text_app(reader), now=self.clock).store, login.store)   # a test clock: its own

    async def test_options_are_checked_as_for_wsgi_and_app_may_be_a_keyword(self) -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await send_text(send)
        wrapped = ASGISessionMiddleware(app=app, secret=SECRET, saveUninitialized=False)   # as Litestar passes it
        self.assertFalse(wrapped.save_uninitialized)
        with self.assertRaisesRegex(TypeError, "unknown ASGISessionMiddleware option 'resav'.*'resave'"):
            ASGISessionMiddleware(app, secret=SECRET, resav=False)
        with self.assertRaisesRegex(TypeError, "secret is required"):
            ASGISessionMiddleware(app)
        with self.assertRaisesRegex(TypeError, "app must be an ASGI application"):
            ASGISessionMiddleware(None, secret=SECRET)
        with self.assertRaisesRegex(TypeError, r"genid must be a callable\(scope\)"):
            ASGISessionMiddleware(app, secret=SECRET, genid="x")


# ---------------------------------------------------------------------------
# §9 ASGI end to end: Starlette and FastAPI under a real uvicorn
# ---------------------------------------------------------------------------

def optional(module: str) -> Any:
    """Import a test-only package, or skip (fail under BUNWAY_REQUIRE_ALL=1) without it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(f"{module} is not installed (pip install {module.split('.')[0]})")


class UvicornServer:
    """A real uvicorn server in a thread, on a socket bound to port 0; stopped on exit."""

    def __init__(self, app: Any) -> None:
        uvicorn = optional("uvicorn")
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 30)
        if not self.server.started:
            raise AssertionError("uvicorn did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()
        if self.thread.is_alive():
            raise AssertionError("uvicorn did not stop within 30 s")


def starlette_app(store: Any) -> Any:
    """A Starlette app: login regenerates, a protected page, a streaming page that changes the
    session while it streams, a sync view that saves, logout destroys."""
    applications = optional("starlette.applications")
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def login(request: Any) -> Any:
        request.session.regenerate()
        request.session["user"] = request.query_params.get("user", "alice")
        return PlainTextResponse("logged in")

    async def private(request: Any) -> Any:
        user = request.session.get("user")
        return PlainTextResponse(f"hello {user}" if user else "who are you?", 200 if user else 401)

    async def value(request: Any) -> Any:
        return PlainTextResponse(json.dumps(get_session(request).get(request.path_params["key"])))

    async def stream(request: Any) -> Any:
        session = request.session

        async def chunks() -> Any:
            yield b"first "
            session["streamed"] = "while streaming"   # after the headers went out
            yield b"second"
        return StreamingResponse(chunks(), media_type="text/plain")

    def sync_view(request: Any) -> Any:   # a def view: Starlette runs it on a worker thread
        session = get_session(request)
        session["from_a_thread"] = True
        session.save()
        return PlainTextResponse("saved")

    async def logout(request: Any) -> Any:
        request.session.destroy()
        return PlainTextResponse("bye")
    return applications.Starlette(
        routes=[Route("/login", login, methods=["POST"]), Route("/private", private),
                Route("/value/{key}", value), Route("/stream", stream), Route("/sync", sync_view),
                Route("/logout", logout, methods=["POST"])],
        middleware=[Middleware(ASGISessionMiddleware, secret=SECRET, store=store)])


def fastapi_app(store: Any) -> Any:
    """The same flow in FastAPI: add_middleware, and a dependency that returns get_session(request)."""
    fastapi = optional("fastapi")
    app = fastapi.FastAPI()
    app.add_middleware(ASGISessionMiddleware, secret=SECRET, store=store, save_uninitialized=False)

    def session_of(request: Any) -> Session:
        return get_session(request)
    # (This module's annotations are strings; FastAPI needs the class to inject the request.)
    session_of.__annotations__ = {"request": fastapi.Request, "return": Session}
    current = fastapi.Depends(session_of)

    @app.post("/login")
    async def login(session: Session = current) -> dict[str, str]:
        session.regenerate()
        session["user"] = "alice"
        return {"ok": "logged in"}

    @app.get("/private")
    async def private(session: Session = current) -> Any:
        if "user" not in session:
            raise fastapi.HTTPException(401, "who are you?")
        return {"user": session["user"]}

    @app.get("/count")
    def count(session: Session = current) -> dict[str, int]:   # a sync view, on a worker thread
        session["views"] = session.get("views", 0) + 1
        return {"views": session["views"]}

    @app.post("/logout")
    async def logout(session: Session = current) -> dict[str, str]:
        session.destroy()
        return {"ok": "bye"}
    return app


def post(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, str]:
    return fetch(opener, url, b"")


class TestASGIEndToEnd(unittest.TestCase):
    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.store = FileStore(self.folder)   # a store that blocks: calls go to worker threads

    def test_starlette_login_streaming_sync_view_and_logout(self) -> None:
        with UvicornServer(starlette_app(self.store)) as live:
            opener, jar = browser()
            self.assertEqual(fetch(opener, live.url + "/private"), (401, "who are you?"))
            before = {c.name: c.value for c in jar}["connect.sid"]
            self.assertEqual(post(opener, live.url + "/login"), (200, "logged in"))
            after = {c.name: c.value for c in jar}["connect.sid"]
            self.assertNotEqual(before, after, "login must regenerate the ID")
            self.assertIsNone(self.store.get(sid_of("x=" + before)))
            self.assertEqual(fetch(opener, live.url + "/private"), (200, "hello alice"))
            # StreamingResponse ends its own task once the last body is sent: the change made
            # while streaming is saved before that, so the next request sees it.
            self.assertEqual(fetch(opener, live.url + "/stream"), (200, "first second"))
            self.assertEqual(fetch(opener, live.url + "/value/streamed"), (200, '"while streaming"'))
            self.assertEqual(fetch(opener, live.url + "/sync"), (200, "saved"))
            self.assertEqual(fetch(opener, live.url + "/value/from_a_thread"), (200, "true"))
            self.assertEqual(post(opener, live.url + "/logout"), (200, "bye"))
            self.assertEqual(list(jar), [])
            self.assertIsNone(self.store.get(sid_of("x=" + after)))
            self.assertEqual(fetch(opener, live.url + "/private")[0], 401)
            # The logged-in cookie, replayed after logout, is just an unknown session.
            replay = urllib.request.Request(live.url + "/private", headers={"Cookie": "connect.sid=" + after})
            with self.assertRaises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(replay, timeout=10)
            self.assertEqual(refused.exception.code, 401)
            refused.exception.close()

    def test_fastapi_add_middleware_and_a_session_dependency(self) -> None:
        with UvicornServer(fastapi_app(self.store)) as live:
            opener, jar = browser()
            self.assertEqual(fetch(opener, live.url + "/private")[0], 401)
            self.assertEqual(list(jar), [])   # save_uninitialized=False: no cookie for nothing
            self.assertEqual(post(opener, live.url + "/login"), (200, '{"ok":"logged in"}'))
            self.assertEqual(fetch(opener, live.url + "/private"), (200, '{"user":"alice"}'))
            self.assertEqual(fetch(opener, live.url + "/count"), (200, '{"views":1}'))
            self.assertEqual(fetch(opener, live.url + "/count"), (200, '{"views":2}'))
            self.assertEqual(post(opener, live.url + "/logout"), (200, '{"ok":"bye"}'))
            self.assertEqual(fetch(opener, live.url + "/private")[0], 401)
            self.assertEqual(self.store.length(), 0)


# ---------------------------------------------------------------------------
# §9 WebSockets
# ---------------------------------------------------------------------------

def http_and_websocket_app(on_message: Callable[[Session, str], Any],
                           on_http: Callable[[Session, dict[str, Any]], Any] = counter) -> Any:
    """An ASGI app: HTTP requests call on_http (as asgi_text_app does); a websocket is accepted
    and each text message gets on_message(session, text)'s result as the reply."""
    http_app = asgi_text_app(on_http)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            return await http_app(scope, receive, send)
        session = get_session(scope)
        if (await receive())["type"] != "websocket.connect":
            raise AssertionError("expected websocket.connect")
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return None
            reply = on_message(session, message["text"])
            if inspect.isawaitable(reply):
                reply = await reply
            await send({"type": "websocket.send", "text": str(reply)})
    return app


class WebSocket:
    """An in-process websocket client: the handshake scope, a queue for receive(), and
    what the app sends. `async with` opens it; close() disconnects and waits for the app."""

    def __init__(self, app: Any, cookie: str | None = None, scheme: str = "ws") -> None:
        headers = [(b"host", b"testserver")] + ([(b"cookie", cookie.encode("latin-1"))] if cookie else [])
        self.scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": scheme, "path": "/ws",
                      "raw_path": b"/ws", "root_path": "", "query_string": b"", "headers": headers,
                      "subprotocols": []}
        self.app = app
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.messages: list[dict[str, Any]] = []

    async def __aenter__(self) -> Self:
        async def send(message: dict[str, Any]) -> None:
            self.messages.append(message)
            await self.sent.put(message)
        self.task = asyncio.ensure_future(self.app(self.scope, self.incoming.get, send))
        await self.incoming.put({"type": "websocket.connect"})
        accepted = await self.next_message()
        if accepted["type"] != "websocket.accept":
            raise AssertionError(f"not accepted: {accepted!r}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.task.done():
            await self.close()

    async def next_message(self) -> dict[str, Any]:
        getting = asyncio.ensure_future(self.sent.get())
        done, _ = await asyncio.wait({getting, self.task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if getting in done:
            return getting.result()
        getting.cancel()
        if self.task.done():
            self.task.result()   # the app's error, if it raised
            raise AssertionError("the app ended without replying")
        raise AssertionError("no reply within 30 s")

    async def say(self, text: str) -> str:
        await self.incoming.put({"type": "websocket.receive", "text": text})
        return str((await self.next_message())["text"])

    async def close(self) -> None:
        await self.incoming.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, 30)


def apply_command(session: Session, text: str) -> Any:
    """A websocket's messages: "get k", "set k v" (v as JSON), "del k", "regenerate", "destroy"."""
    command, _, rest = text.partition(" ")
    if command == "get":
        return json.dumps(session.get(rest))
    if command == "set":
        key, _, value = rest.partition(" ")
        session[key] = json.loads(value)
        return "ok"
    if command == "del":
        del session[rest]
        return "ok"
    getattr(session, command)()
    return "ok"


async def saving(session: Session, text: str) -> Any:
    if text == "save":
        await session.asave()
        return "saved"
    return apply_command(session, text)


class TestWebSockets(AsyncTestCase):
    def setUp(self) -> None:
        self.clock = Clock(time.time())
        self.store = RecordingStore(MemoryStore(now=self.clock))
        self.app = asgi(http_and_websocket_app(saving), store=self.store, now=self.clock)

    async def logged_in(self) -> tuple[str, str]:
        """Log in over HTTP: (cookie header, sid)."""
        client = ASGIClient(asgi(asgi_text_app(lambda s, e: s.update(user="alice", views=1)),
                                 store=self.store, now=self.clock))
        await client.arequest()
        return jar_header(client), sid_of_jar(client)

    async def test_the_handshake_cookie_loads_the_session_and_the_reply_sets_no_cookie(self) -> None:
        cookie, _ = await self.logged_in()
        self.store.calls.clear()
        async with WebSocket(self.app, cookie) as socket:
            self.assertEqual(await socket.say("get user"), '"alice"')
        self.assertEqual(socket.messages[0], {"type": "websocket.accept"})   # passed on untouched
        self.assertEqual(self.store.kinds(), ["get"])   # no touch, no save: nothing changed

    async def test_changes_are_saved_key_by_key_when_the_handler_returns(self) -> None:
        cookie, sid = await self.logged_in()
        stored_cookie = self.store.inner.get(sid)["cookie"]
        self.clock.advance(60_000)
        self.store.calls.clear()
        async with WebSocket(self.app, cookie) as socket:
            await socket.say("set typing true")
            await socket.say("del views")
            self.assertNotIn("typing", self.store.inner.get(sid))   # not yet
        stored = self.store.inner.get(sid)
        self.assertEqual((stored["typing"], "views" in stored, stored["user"]), (True, False, "alice"))
        self.assertEqual(stored["cookie"], stored_cookie)   # expiry and cookie as they were
        self.assertEqual(self.store.kinds(), ["get", "update"])

    async def test_asave_saves_before_the_websocket_closes(self) -> None:
        cookie, sid = await self.logged_in()
        async with WebSocket(self.app, cookie) as socket:
            await socket.say("set step 1")
            self.assertEqual(await socket.say("save"), "saved")
            self.assertEqual(self.store.inner.get(sid)["step"], 1)
            await socket.say("set step 2")
        self.assertEqual(self.store.inner.get(sid)["step"], 2)

    async def test_a_websocket_without_a_stored_session_stores_nothing(self) -> None:
        for cookie in (None, "connect.sid=" + urllib.parse.quote("s:" + sign("unknown", SECRET))):
            self.store.calls.clear()
            async with WebSocket(self.app, cookie) as socket:
                self.assertEqual(await socket.say("get user"), "null")
                await socket.say('set user "mallory"')
                self.assertEqual(await socket.say("save"), "saved")
            self.assertEqual(self.store.kinds(), [] if cookie is None else ["get"])
            self.assertEqual(self.store.inner.length(), 0)

    async def test_a_websocket_cannot_regenerate_or_destroy(self) -> None:
        cookie, sid = await self.logged_in()
        for method in ("regenerate", "destroy"):
            with self.subTest(method=method):
                socket = WebSocket(self.app, cookie)
                await socket.__aenter__()
                await socket.incoming.put({"type": "websocket.receive", "text": method})
                with self.assertRaisesRegex(RuntimeError, rf"session.{method}\(\) is not possible on a websocket"):
                    await asyncio.wait_for(socket.task, 30)
        self.assertEqual(self.store.inner.get(sid)["user"], "alice")

    async def test_an_exception_in_the_handler_drops_its_changes(self) -> None:
        cookie, sid = await self.logged_in()

        def failing(session: Session, text: str) -> Any:
            session["half"] = "made"
            raise ValueError("handler failed")
        app = asgi(http_and_websocket_app(failing), store=self.store, now=self.clock)
        socket = WebSocket(app, cookie)
        await socket.__aenter__()
        await socket.incoming.put({"type": "websocket.receive", "text": "x"})
        with self.assertRaisesRegex(ValueError, "handler failed"):
            await asyncio.wait_for(socket.task, 30)
        self.assertNotIn("half", self.store.inner.get(sid))

    async def test_a_store_without_update_cannot_save_a_websockets_changes(self) -> None:
        store = RecordingStore(MemoryStore(now=self.clock), update=False)
        client = ASGIClient(asgi(asgi_text_app(counter), store=store, now=self.clock))
        await client.arequest()
        app = asgi(http_and_websocket_app(saving), store=store, now=self.clock)
        socket = WebSocket(app, jar_header(client))
        await socket.__aenter__()
        await socket.say("set typing true")
        await socket.incoming.put({"type": "websocket.disconnect", "code": 1000})
        with self.assertRaisesRegex(TypeError, r"a websocket saves its changes key by key with the store's "
                                               r"update\(\) .* RecordingStore has neither, so its changes to 'typing'"):
            await asyncio.wait_for(socket.task, 30)

    async def test_wss_is_secure_and_get_session_reads_a_websocket(self) -> None:
        class Request:   # what Starlette's WebSocket carries
            def __init__(self, scope: dict[str, Any]) -> None:
                self.scope = scope
        seen: list[Any] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            seen.append((get_session(Request(scope)), bs._scope_is_secure(scope, None)))
            await receive()
            await send({"type": "websocket.close"})
        socket = WebSocket(asgi(app, store=self.store), scheme="wss")
        socket.task = asyncio.ensure_future(socket.app(socket.scope, socket.incoming.get, socket.sent.put))
        await socket.incoming.put({"type": "websocket.connect"})
        await asyncio.wait_for(socket.task, 30)
        self.assertIsInstance(seen[0][0], Session)
        self.assertTrue(seen[0][1])


class WebSocketClient:
    """A minimal RFC 6455 client on a plain socket: the upgrade handshake (with a Cookie), then
    masked text frames out and unmasked frames in. Enough to talk to a real server in a test."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, url: str, path: str, cookie: str | None) -> None:
        import base64
        import hashlib
        host, port = url.split("//", 1)[1].split(":")
        self.socket = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"] + ([f"Cookie: {cookie}"] if cookie else [])
        self.socket.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.read_some()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status, *lines = head.decode("latin-1").split("\r\n")
        self.headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        if not status.startswith("HTTP/1.1 101") or self.headers.get("sec-websocket-accept") != accept:
            raise AssertionError(f"no websocket upgrade: {head!r}")

    def read_some(self) -> bytes:
        chunk = self.socket.recv(65536)
        if not chunk:
            raise AssertionError("the server closed the connection")
        return chunk

    def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.buffer += self.read_some()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        header = bytes([0x80 | opcode])
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 65536:
            header += bytes([0x80 | 126]) + length.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + length.to_bytes(8, "big")
        self.socket.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def receive_text(self) -> str:
        first, second = self.read_exactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self.read_exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(self.read_exactly(8), "big")
        payload = self.read_exactly(length)
        if first & 0x0F != 0x1:
            raise AssertionError(f"expected a text frame, got opcode {first & 0x0F}")
        return payload.decode()

    def close(self) -> None:
        """Send a close frame, wait for the server's, and close the socket."""
        try:
            self.send_frame(0x8, (1000).to_bytes(2, "big"))
            while True:
                first, second = self.read_exactly(2)
                length = second & 0x7F
                self.read_exactly(length)
                if first & 0x0F == 0x8:
                    break
        finally:
            self.socket.close()


def starlette_websocket_app(store: Any) -> Any:
    """Starlette: HTTP login and logout, and a websocket that greets the user and keeps what
    it is told in the session."""
    applications = optional("starlette.applications")
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute

    async def login(request: Any) -> Any:
        request.session.regenerate()
        request.session["user"] = "alice"
        return PlainTextResponse("logged in")

    async def logout(request: Any) -> Any:
        request.session.destroy()
        return PlainTextResponse("bye")

    async def value(request: Any) -> Any:
        return PlainTextResponse(json.dumps(request.session.get(request.path_params["key"])))

    async def chat(websocket: Any) -> None:
        await websocket.accept()
        await websocket.send_text(f"hello {websocket.session.get('user')}")
        async for text in websocket.iter_text():
            websocket.session["last_message"] = text
            await websocket.send_text("noted")
    return applications.Starlette(
        routes=[Route("/login", login, methods=["POST"]), Route("/logout", logout, methods=["POST"]),
                Route("/value/{key}", value), WebSocketRoute("/chat", chat)],
        middleware=[Middleware(ASGISessionMiddleware, secret=SECRET, store=store)])


class TestWebSocketEndToEnd(unittest.TestCase):
    def test_a_websocket_under_uvicorn_reads_the_login_and_saves_when_it_closes(self) -> None:
        optional("websockets")   # uvicorn's websocket support
        store = MemoryStore()
        app = starlette_websocket_app(store)
        finished: list[threading.Event] = []   # one a websocket, set when the app (and its save) is done

        async def signalling(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "websocket":
                return await app(scope, receive, send)  # type: ignore[no-any-return]
            done = threading.Event()
            finished.append(done)
            try:
                await app(scope, receive, send)
            finally:
                done.set()
            return None
        with UvicornServer(signalling) as live:
            opener, jar = browser()
            self.assertEqual(post(opener, live.url + "/login"), (200, "logged in"))
            cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
            socket_client = WebSocketClient(live.url, "/chat", cookie)
            self.assertNotIn("set-cookie", socket_client.headers)   # the handshake sets no cookie
            self.assertEqual(socket_client.receive_text(), "hello alice")
            socket_client.send_text("typing")
            self.assertEqual(socket_client.receive_text(), "noted")
            socket_client.close()
            self.assertTrue(finished[0].wait(30), "the websocket's handler did not return")
            self.assertEqual(fetch(opener, live.url + "/value/last_message"), (200, '"typing"'))

            # A websocket that closes after a logout does not bring the session back.
            sid = sid_of("x=" + {c.name: c.value for c in jar}["connect.sid"])
            late = WebSocketClient(live.url, "/chat", cookie)
            self.assertEqual(late.receive_text(), "hello alice")
            self.assertEqual(post(opener, live.url + "/logout"), (200, "bye"))
            late.send_text("after logout")
            self.assertEqual(late.receive_text(), "noted")
            late.close()
            self.assertTrue(finished[1].wait(30), "the websocket's handler did not return")
            self.assertIsNone(store.get(sid))
            self.assertEqual(store.length(), 0)
            self.assertEqual(fetch(opener, live.url + "/value/user"), (200, "null"))


class AsyncOnlyStore:
    """A custom store with only the async twins (a dict; it never blocks)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    async def aget(self, sid: str) -> Any:
        return self.inner.get(sid)

    async def aset(self, sid: str, session: dict[str, Any], max_age: int | None = None) -> None:
        self.inner.set(sid, session, max_age)

    async def adestroy(self, sid: str) -> None:
        self.inner.destroy(sid)


class TestGetSession(unittest.TestCase):
    def test_from_an_environ_a_scope_or_a_request_object(self) -> None:
        session = Session({}, "sid", None, False, None)  # type: ignore[arg-type]
        carrier = {"bunway.session": session}

        class Carrier:
            def __init__(self, **attributes: Any) -> None:
                self.__dict__.update(attributes)
        for request in (carrier, Carrier(scope=carrier), Carrier(environ=carrier), Carrier(META=carrier),
                        Carrier(scope=carrier, META={})):
            self.assertIs(get_session(request), session)
        for request in ({}, Carrier(scope={}), Carrier(), None, Carrier(scope="not a mapping")):
            with self.assertRaisesRegex(LookupError, "wrap the app in SessionMiddleware .* or ASGISessionMiddleware"):
                get_session(request)

    def test_wsgi_refuses_a_store_with_only_async_methods(self) -> None:
        with self.assertRaisesRegex(TypeError, r"store must have get, set and destroy methods; AsyncOnlyStore "
                                    r"has no get\(\); a store with only async methods serves ASGISessionMiddleware"):
            wsgi(text_app(counter), store=AsyncOnlyStore())
        client = ASGIClient(asgi(asgi_text_app(counter), store=AsyncOnlyStore()))
        client.request()
        self.assertEqual(client.request().body, b"2")


# ---------------------------------------------------------------------------
# §6 Stores: MemoryStore
# ---------------------------------------------------------------------------

def document_expiring_at(ms: int | None, **data: Any) -> dict[str, Any]:
    cookie = {"originalMaxAge": None if ms is None else 60_000,
              "expires": None if ms is None else bs._iso_ms(ms), "httpOnly": True, "path": "/"}
    return {"cookie": cookie, **data}


class TestMemoryStore(unittest.TestCase):
    def test_round_trip_keeps_json_not_live_objects(self) -> None:
        store = MemoryStore()
        document = document_expiring_at(int(time.time() * 1000) + 60_000, items=[1, 2])
        store.set("a", document)
        document["items"].append(3)
        loaded = store.get("a")
        self.assertEqual(loaded["items"], [1, 2])
        loaded["items"].append(4)
        self.assertEqual(store.get("a")["items"], [1, 2])
        self.assertEqual(loaded["cookie"]["expires"], document["cookie"]["expires"])

    def test_expired_sessions_are_never_returned(self) -> None:
        clock = Clock()
        store = MemoryStore(now=clock)
        store.set("a", document_expiring_at(int(clock() * 1000) + 1000))
        store.set("b", document_expiring_at(None), None)
        clock.advance(999)
        self.assertIsNotNone(store.get("a"))
        clock.advance(1)
        self.assertIsNone(store.get("a"))
        self.assertIsNotNone(store.get("b"))
        clock.advance(86_400_000)  # a browser-session cookie's session lives `ttl` after its last write
        self.assertIsNone(store.get("b"))

    def test_pruning_drops_a_session_only_once_its_current_deadline_passed(self) -> None:
        clock = Clock()
        store = MemoryStore(now=clock)
        now = int(clock() * 1000)
        store.set("touched", document_expiring_at(now + 1000))
        store.set("saved", document_expiring_at(now + 1000))
        store.touch("touched", document_expiring_at(now + 5000))
        store.update("saved", {"v": 1}, [], document_expiring_at(now + 5000)["cookie"])
        clock.advance(2000)                               # both first deadlines have passed
        store.set("newcomer", document_expiring_at(now + 60_000))   # a write prunes what is due
        store._prune(int(clock() * 1000))                 # and so does a full prune
        self.assertEqual(sorted(store._entries), ["newcomer", "saved", "touched"])
        self.assertEqual(store.get("saved")["v"], 1)
        clock.advance(3000)                               # their deadline: no longer sessions,
        self.assertEqual(sorted(store.all()), ["newcomer"])
        clock.advance(1000)                               # and pruned once that second has passed
        store.set("another", document_expiring_at(now + 60_000))
        self.assertEqual(sorted(store._entries), ["another", "newcomer"])

    def test_update_of_an_expired_session_is_false_and_writes_nothing(self) -> None:
        clock = Clock()
        store = MemoryStore(now=clock)
        now = int(clock() * 1000)
        store.set("a", document_expiring_at(now + 1000, v=1))
        clock.advance(1000)
        self.assertFalse(store.update("a", {"v": 2}, [], document_expiring_at(now + 90_000)["cookie"]))
        self.assertIsNone(store.get("a"))
        self.assertNotIn("a", store._entries)

    def test_touch_extends_without_writing_data(self) -> None:
        clock = Clock()
        store = MemoryStore(now=clock)
        now = int(clock() * 1000)
        store.set("a", document_expiring_at(now + 1000, v=1))
        stale = document_expiring_at(now + 5000, v="stale copy")
        self.assertTrue(store.touch("a", stale))
        clock.advance(2000)
        self.assertEqual(store.get("a")["v"], 1)
        self.assertEqual(store.get("a")["cookie"]["expires"], bs._iso_ms(now + 5000))
        self.assertFalse(store.touch("missing", stale))

    def test_expired_sessions_are_pruned_without_the_app_calling_anything(self) -> None:
        clock = Clock()
        store = MemoryStore(now=clock)
        now = int(clock() * 1000)
        for i in range(100):
            store.set(f"old{i}", document_expiring_at(now + 1000))
        clock.advance(5000)
        for i in range(20):  # each new session prunes a few expired ones
            store.set(f"new{i}", document_expiring_at(now + 60_000))
        self.assertEqual(len(store._entries), 20)
        self.assertEqual((store.size, store.length()), (20, 20))

    def test_all_and_length_agree_when_a_deadline_was_shortened(self) -> None:
        clock = Clock()
        store = MemoryStore(now=clock)
        now = int(clock() * 1000)
        store.set("a", document_expiring_at(now + 60_000, v=1))
        store.touch("a", document_expiring_at(now + 1000))  # e.g. the max age was cut
        store.set("b", document_expiring_at(now + 60_000, v=2))
        clock.advance(2000)
        self.assertEqual((sorted(store.all()), store.length()), (["b"], 1))

    def test_size_length_all_clear(self) -> None:
        store = MemoryStore()
        now = int(time.time() * 1000)
        store.set("a", document_expiring_at(now + 60_000, v=1))
        store.set("b", document_expiring_at(now + 60_000, v=2))
        self.assertEqual((store.size, store.length()), (2, 2))
        self.assertEqual({sid: doc["v"] for sid, doc in store.all().items()}, {"a": 1, "b": 2})
        store.destroy("a")
        store.destroy("never existed")
        self.assertEqual(store.length(), 1)
        store.clear()
        self.assertEqual((store.size, store.all()), (0, {}))

    def test_a_subclass_that_writes_its_own_way_is_handed_documents(self) -> None:
        # The wrappers hand a MemoryStore its sessions without documents, unless a subclass
        # overrides set, update or touch: then those are called as for any store.
        written: list[tuple[str, dict[str, Any]]] = []

        class AuditedStore(MemoryStore):
            def set(self, sid: str, session: dict[str, Any], max_age: int | None = None) -> None:
                written.append(("set", session))
                super().set(sid, session, max_age)

            def update(self, sid: str, changes: Any, deleted: Any, cookie: Any, max_age: Any = None) -> bool:
                written.append(("update", dict(changes)))
                return super().update(sid, changes, deleted, cookie, max_age)

            def touch(self, sid: str, session: dict[str, Any]) -> bool:
                written.append(("touch", session))
                return super().touch(sid, session)

        store = AuditedStore()
        client = Client(wsgi(text_app(counter), store=store, resave=False))
        for _ in range(2):
            client.request()
        Client(wsgi(text_app(reader), store=store, resave=False)).request(
            cookie="; ".join(f"{k}={v}" for k, v in client.cookies.items()))
        self.assertEqual([kind for kind, _ in written], ["set", "update", "touch"])
        self.assertEqual((written[0][1]["views"], written[1][1]), (1, {"views": 2}))
        self.assertEqual(set(written[2][1]["cookie"]), {"originalMaxAge", "expires", "secure", "httpOnly", "path",
                                                        "sameSite"})

    def test_a_cookie_field_that_cannot_be_a_key_is_kept_as_it_is(self) -> None:
        store = MemoryStore()
        cookie = SessionCookie(expires_ms=int(time.time() * 1000) + 60_000, original_max_age=60_000)
        cookie.domain = ["example.com"]  # type: ignore[assignment]  # (nonsense, but it must not break the store)
        store._set_session("a", '{"v":1}', {"v": 1}, cookie)
        self.assertTrue(store._touch_session("a", cookie))
        self.assertEqual((store.get("a")["v"], store.get("a")["cookie"]["domain"]), (1, ["example.com"]))
        store.set("b", {"cookie": {"path": "/", "tags": ["x"]}, "v": 2})
        self.assertEqual(store.get("b")["cookie"]["tags"], ["x"])

    def test_a_request_leaves_no_reference_cycle_behind(self) -> None:
        # The lifecycle is handed its session rather than keeping it: a finished request's
        # objects are freed at once, with nothing left for the garbage collector to find.
        store = MemoryStore()
        wsgi_app = wsgi(text_app(counter), store=store, resave=False)
        asgi_app = asgi(asgi_text_app(counter), store=store, resave=False)
        cookie = Client(wsgi_app, validate=False).request().session_cookie().split(";", 1)[0]

        def wsgi_request(cookie: str | None) -> None:
            environ: dict[str, Any] = {}
            setup_testing_defaults(environ)
            if cookie:
                environ["HTTP_COOKIE"] = cookie
            body = wsgi_app(environ, lambda status, headers, exc_info=None: None)
            list(body)
            getattr(body, "close", lambda: None)()

        async def asgi_requests() -> None:
            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                pass

            for cookie_header in (None, cookie.encode(), None, cookie.encode()):
                headers = [(b"cookie", cookie_header)] if cookie_header else []
                await asgi_app({"type": "http", "method": "GET", "path": "/", "headers": headers,
                                "scheme": "http"}, receive, send)

        loop = asyncio.new_event_loop()
        try:
            for step in (lambda: [wsgi_request(c) for c in (None, cookie, None, cookie)],
                         lambda: loop.run_until_complete(asgi_requests())):
                step()   # (a first run: whatever is made once is made)
                gc.collect()
                gc.disable()
                try:
                    step()
                    self.assertEqual(gc.collect(), 0)
                finally:
                    gc.enable()
        finally:
            loop.close()

    def test_update_applies_only_the_given_keys(self) -> None:
        store = MemoryStore()
        now = int(time.time() * 1000)
        store.set("a", document_expiring_at(now + 60_000, x=1, y=1, z=1))
        cookie = document_expiring_at(now + 90_000)["cookie"]
        self.assertTrue(store.update("a", {"y": 2}, ["z"], cookie))
        self.assertEqual({k: v for k, v in store.get("a").items() if k != "cookie"}, {"x": 1, "y": 2})
        self.assertEqual(store.get("a")["cookie"]["expires"], cookie["expires"])
        self.assertFalse(store.update("missing", {"y": 2}, [], cookie))
        self.assertIsNone(store.get("missing"))


# ---------------------------------------------------------------------------
# §7 Bad input
# ---------------------------------------------------------------------------

class TestBadInput(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.app = wsgi(text_app(counter), store=self.store)
        owner = Client(self.app)
        owner.request()
        owner.request()
        self.cookie = owner.cookies["connect.sid"]
        self.sid = sid_of("x=" + self.cookie)

    def assert_fresh_session(self, cookie_header: str) -> None:
        response = Client(self.app).request(cookie=cookie_header)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"1", cookie_header)
        self.assertNotEqual(sid_of(response.session_cookie()), self.sid)
        self.assertEqual(self.store.get(self.sid)["views"], 2)

    def test_invalid_session_cookies_give_a_new_session(self) -> None:
        signed = urllib.parse.unquote(self.cookie)

        def flip(text: str) -> str:  # change the last character, whatever it is
            return text[:-1] + ("A" if text[-1] != "A" else "B")
        for value in [
            flip(signed),                                         # tampered signature
            "s:" + flip(self.sid) + signed[len(self.sid) + 2:],   # tampered ID
            self.sid,                                             # unsigned
            "s:" + self.sid,                                      # prefix but no signature
            signed[: len(signed) // 2],                           # truncated
            "",                                                   # empty
            "s:" + "A" * 10_000 + "." + "B" * 43,                 # oversized
            "s%3G" + self.cookie[4:],                             # badly percent-encoded
            "s%E2%3A" + self.cookie[4:],                          # percent-encoded bad UTF-8
            "%ZZ%" + self.cookie,
            urllib.parse.quote("s:" + sign(self.sid, "another secret")),  # another app's secret
            urllib.parse.quote(sign(self.sid, SECRET)),           # signed, but without the "s:" prefix
            '"' + self.cookie,                                    # a stray quote
        ]:
            with self.subTest(value=value[:40]):
                self.assert_fresh_session(f"connect.sid={value}")

    def test_a_session_cookie_over_4096_characters_is_ignored_even_if_signed(self) -> None:
        long_id = "L" * 4100
        self.store.set(long_id, {**self.store.get(self.sid), "views": 40})
        cookie = urllib.parse.quote("s:" + sign(long_id, SECRET))
        self.assertGreater(len(cookie), 4096)
        response = Client(self.app).request(cookie="connect.sid=" + cookie)
        self.assertEqual(response.body, b"1")
        self.assertNotEqual(sid_of(response.session_cookie()), long_id)
        self.assertEqual(self.store.get(long_id)["views"], 40)
        # Just under the limit the same kind of ID is read.
        short_id = "S" * 3900
        self.store.set(short_id, {**self.store.get(self.sid), "views": 40})
        short = urllib.parse.quote("s:" + sign(short_id, SECRET))
        self.assertEqual(Client(self.app).request(cookie="connect.sid=" + short).body, b"41")

    def test_unknown_id_is_never_adopted(self) -> None:
        chosen = "attacker-chosen-id"
        response = Client(self.app).request(cookie="connect.sid=" + urllib.parse.quote("s:" + sign(chosen, SECRET)))
        new_id = sid_of(response.session_cookie())
        self.assertNotEqual(new_id, chosen)
        self.assertIsNone(self.store.get(chosen))

    def test_the_first_session_cookie_counts(self) -> None:
        other = Client(self.app)
        other.request()
        response = Client(self.app).request(cookie=f"connect.sid={self.cookie}; connect.sid={other.cookies['connect.sid']}")
        self.assertEqual(response.body, b"3")
        response = Client(self.app).request(cookie=f"connect.sid=garbage; connect.sid={self.cookie}")
        self.assertEqual(response.body, b"1")

    def test_malformed_neighbours_do_not_hide_the_session_cookie(self) -> None:
        for header in [
            f'a="unterminated; connect.sid={self.cookie}',
            f'json={{"a": [1, 2]}}; noequals; connect.sid={self.cookie}',
            f'sp ace=1; =; ;;; connect.sid={self.cookie}; after=1',
            f'q="x y"; connect.sid="{self.cookie}"',
            f'ü=€; connect.sid={self.cookie}',
        ]:
            with self.subTest(header=header[:30]):
                response = Client(self.app).request(cookie=header)
                self.assertEqual(response.body, b"3")
                self.store.set(self.sid, {**self.store.get(self.sid), "views": 2})

    def test_garbage_in_the_store_gives_a_new_session(self) -> None:
        class GarbageStore(RecordingStore):
            def get(self, sid: str) -> Any:
                return {"cookie": {"expires": "not a date"}, "views": 5}
        response = Client(wsgi(text_app(counter), store=GarbageStore())).request(
            cookie="connect.sid=" + self.cookie)
        self.assertEqual(response.body, b"1")
        self.assertNotEqual(sid_of(response.session_cookie()), self.sid)

    def test_remembered_cookie_values_are_bounded_and_only_verified_ones(self) -> None:
        from unittest import mock
        with mock.patch.object(bs, "_MAX_VERIFIED", 3):
            clients = [Client(self.app) for _ in range(5)]
            for client in clients:
                client.request()
                client.request()
            self.assertLessEqual(len(self.app._verified), 3)
            for value in ("s%3Aforged.signature", urllib.parse.quote("s:" + sign("x", "other secret"))):
                Client(self.app).request(cookie="connect.sid=" + value)
                self.assertNotIn(value, self.app._verified)
            self.assertEqual([c.request().body for c in clients], [b"3"] * 5)

    def test_a_huge_cookie_header_is_handled(self) -> None:
        header = "; ".join(f"c{i}=v{i}" for i in range(5000)) + f"; connect.sid={self.cookie}"
        self.assertEqual(Client(self.app).request(cookie=header).body, b"3")


# ---------------------------------------------------------------------------
# §6 Stores: FileStore
# ---------------------------------------------------------------------------

# Written by the npm package session-file-store 1.5.0 under express-session 1.19.0:
#   new FileStore({path}), genid: () => 'nodeFileSession_0123456789abcdef', cookie: {maxAge:
#   86400000, sameSite: 'lax'}, a route setting views = 3, user = {name: 'Zoë', roles: ['a', 'b']},
#   flash = {info: ['saved']}; this is the file's whole text, and the response's Set-Cookie.
NODE_FILE_SID = "nodeFileSession_0123456789abcdef"
NODE_FILE = ('{"cookie":{"originalMaxAge":86400000,"expires":"2026-11-27T20:44:52.775Z","httpOnly":true,'
             '"path":"/","sameSite":"lax"},"views":3,"user":{"name":"Zoë","roles":["a","b"]},'
             '"flash":{"info":["saved"]},"__lastAccess":1795725892776}')
NODE_FILE_SET_COOKIE = ("connect.sid=s%3AnodeFileSession_0123456789abcdef.5MuITHFSVHwtNN3Ot1fjLLBZJF3fX"
                        "%2B3902UwRgMxdgk; Path=/; Expires=Fri, 27 Nov 2026 20:44:52 GMT; HttpOnly; SameSite=Lax")
NODE_FILE_WRITTEN = 1_795_725_892.776


def big_document(n: int, expires_ms: int) -> dict[str, Any]:
    """A document whose keys all hold n: a reader that sees a mix of two writes notices."""
    return document_expiring_at(expires_ms, **{f"k{i}": [n] * 50 for i in range(40)})


def consistent(document: dict[str, Any] | None) -> bool:
    if document is None:
        return False
    values = {json.dumps(v) for k, v in document.items() if k.startswith("k")}
    return len(values) == 1


def hammer_file_store(folder: str, worker: int, rounds: int, start: Any) -> None:
    """In a child process: write and read one shared session, failing on any partial read."""
    store = FileStore(folder)
    start.wait(30)
    expires = int(time.time() * 1000) + 600_000
    for i in range(rounds):
        store.set("shared", big_document(worker * 1000 + i, expires))
        if not consistent(store.get("shared")):
            raise SystemExit(3)


def crash_in_the_middle_of_a_write(folder: str, ready: str) -> None:
    """In a child process: write half of a session file, say so, and wait to be killed."""
    store = FileStore(folder)
    real_write = os.write

    def half_then_hang(fd: int, data: Any) -> int:
        written = real_write(fd, bytes(data[: len(data) // 2]))
        with open(ready, "w"):
            pass
        time.sleep(60)
        return written
    os.write = half_then_hang  # type: ignore[assignment]
    store.set("victim", big_document(2, int(time.time() * 1000) + 3_600_000))


def write_until_killed(folder: str) -> None:
    store = FileStore(folder)
    expires = int(time.time() * 1000) + 3_600_000
    for i in range(100_000):
        store.set(f"s{i % 5}", big_document(i, expires))


def write_past_the_file_size_limit(folder: str) -> None:
    """In a child process: RLIMIT_FSIZE makes the write fail (as a full disk would)."""
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    store = FileStore(folder)
    try:
        store.set("victim", big_document(2, int(time.time() * 1000) + 600_000))
    except OSError:
        raise SystemExit(0) from None
    raise SystemExit(5)  # the write should have failed


def spawn(test: unittest.TestCase, target: Callable[..., Any], *args: Any) -> Any:
    """A child process running target(*args); the test's cleanup kills it if it is still there."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    test.addCleanup(stop_process, process)
    return process


def exit_code(process: Any, timeout: float) -> int | None:
    """Wait up to `timeout` for a child to end, kill it if it has not, and return its exit code."""
    process.join(timeout)
    if process.is_alive():
        stop_process(process)
        raise AssertionError(f"a child process was still running after {timeout} s; killed it")
    return process.exitcode  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


class TestFileStore(unittest.TestCase):
    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.clock = Clock(time.time())
        self.store = FileStore(self.folder, now=self.clock)

    def files(self) -> list[str]:
        return sorted(os.listdir(self.folder))

    def test_file_name_and_json_shape_match_session_file_store(self) -> None:
        app = wsgi(text_app(counter), store=self.store, now=self.clock)
        response = Client(app).request()
        sid = sid_of(response.session_cookie())
        self.assertEqual(self.files(), [sid + ".json"])
        with open(os.path.join(self.folder, sid + ".json"), encoding="utf-8") as file:
            text = file.read()
        now_ms = int(self.clock() * 1000)
        self.assertEqual(text, bs._dumps({
            "cookie": {"originalMaxAge": 86_400_000, "expires": bs._iso_ms(now_ms + 86_400_000),
                       "secure": False, "httpOnly": True, "path": "/", "sameSite": "lax"},
            "views": 1, "__lastAccess": now_ms}))
        self.assertEqual(os.stat(os.path.join(self.folder, sid + ".json")).st_mode & 0o777, 0o600)

    def test_folder_is_created_private(self) -> None:
        folder = os.path.join(self.folder, "a", "b")
        FileStore(folder)
        self.assertEqual(os.stat(folder).st_mode & 0o777, 0o700)

    def test_reads_a_file_written_by_session_file_store(self) -> None:
        with open(os.path.join(self.folder, NODE_FILE_SID + ".json"), "w", encoding="utf-8") as file:
            file.write(NODE_FILE)
        clock = Clock(NODE_FILE_WRITTEN)
        store = FileStore(self.folder, now=clock)
        self.assertEqual(store.get(NODE_FILE_SID)["user"], {"name": "Zoë", "roles": ["a", "b"]})
        self.assertNotIn("__lastAccess", store.get(NODE_FILE_SID))
        app = wsgi(text_app(counter), store=store, now=clock, resave=False)
        client = Client(app)
        client.cookies["connect.sid"] = NODE_FILE_SET_COOKIE.split(";")[0].split("=", 1)[1]
        response = client.request()
        self.assertEqual(response.body, b"4")
        self.assertEqual(response.session_cookie(), NODE_FILE_SET_COOKIE)  # the same cookie, byte for byte
        with open(os.path.join(self.folder, NODE_FILE_SID + ".json"), encoding="utf-8") as file:
            written = json.load(file)
        self.assertEqual((written["views"], written["user"]["name"], written["__lastAccess"]),
                         (4, "Zoë", 1_795_725_892_776))

    def test_expiry_by_cookie_expires(self) -> None:
        now = int(self.clock() * 1000)
        self.store.set("a", document_expiring_at(now + 1000))
        self.clock.advance(999)
        self.assertIsNotNone(self.store.get("a"))
        self.clock.advance(1)
        self.assertIsNone(self.store.get("a"))
        self.assertEqual(self.files(), ["a.json"], "get must not delete: another process may be rewriting it")

    def test_expiry_by_ttl_when_the_cookie_has_no_expiry(self) -> None:
        store = FileStore(self.folder, ttl=60_000, now=self.clock)
        store.set("a", document_expiring_at(None))
        self.clock.advance(59_999)
        self.assertIsNotNone(store.get("a"))
        self.clock.advance(1)
        self.assertIsNone(store.get("a"))

    def test_reap_deletes_expired_files_and_stale_temporary_files_only(self) -> None:
        now = int(self.clock() * 1000)
        self.store.set("old", document_expiring_at(now + 1000))
        self.store.set("live", document_expiring_at(now + 3_600_000))
        temp = f".old.json.{now:x}-0123abcd.tmp"   # started now, by the store's clock
        for name in (temp, ".old.json.notatime-0123abcd.tmp", "notes.txt", "foreign.json.bak"):
            with open(os.path.join(self.folder, name), "w") as file:
                file.write("x")
        self.clock.advance(2000)
        self.assertEqual(self.store.reap(), 1)
        self.assertEqual(self.files(), [temp, ".old.json.notatime-0123abcd.tmp", "foreign.json.bak",
                                        "live.json", "notes.txt"])
        self.clock.advance(bs._STALE_TEMP_MS - 2000 - 1)
        self.assertEqual(self.store.reap(), 0)   # not yet ten minutes old
        self.clock.advance(1)
        self.assertEqual(self.store.reap(), 1)
        self.assertEqual(self.files(), [".old.json.notatime-0123abcd.tmp", "foreign.json.bak", "live.json",
                                        "notes.txt"])

    def test_expired_files_are_reaped_by_writes_a_few_at_a_time(self) -> None:
        store = FileStore(self.folder, reap_interval=60_000, now=self.clock)
        now = int(self.clock() * 1000)
        for i in range(40):
            store.set(f"old{i}", document_expiring_at(now + 1000))
        self.clock.advance(120_000)
        store.set("new0", document_expiring_at(now + 3_600_000))
        remaining = len(self.files())
        self.assertGreaterEqual(remaining, 41 - bs._REAP_BATCH)  # one write does a bounded amount
        for i in range(1, 20):  # 4 entries a write: 60 entries need 15 writes
            store.set(f"new{i}", document_expiring_at(now + 3_600_000))
        self.assertEqual(self.files(), sorted(f"new{i}.json" for i in range(20)))

    def test_unsafe_ids_are_refused_and_not_found(self) -> None:
        document = document_expiring_at(int(self.clock() * 1000) + 60_000)
        outside = os.path.join(os.path.dirname(self.folder), "escaped.json")
        for sid in ("../escaped", "a/b", "a\\b", "..", ".hidden", "nul\x00byte", "tab\tid", "x" * 300, "", "c:d"):
            with self.subTest(sid=sid):
                with self.assertRaisesRegex(ValueError, "refuses session ID"):
                    self.store.set(sid, document)
                self.assertIsNone(self.store.get(sid))
                self.store.destroy(sid)
                self.assertFalse(self.store.touch(sid, document))
        self.assertFalse(os.path.exists(outside))
        self.assertEqual(self.files(), [])
        # Through the middleware, a cookie naming such an ID is just an unknown session.
        app = wsgi(text_app(counter), store=self.store)
        response = Client(app).request(cookie="connect.sid=" + urllib.parse.quote("s:" + sign("../escaped", SECRET)))
        self.assertEqual(response.body, b"1")

    def test_corrupt_or_foreign_files_read_as_no_session(self) -> None:
        app = wsgi(text_app(counter), store=self.store, now=self.clock)
        for name, content in [("empty", ""), ("truncated", NODE_FILE[:60]), ("notjson", "hello"),
                              ("array", "[1, 2]"), ("nocookie", '{"views": 5}'), ("binary", "\udcff")]:
            with self.subTest(name=name):
                with open(os.path.join(self.folder, name + ".json"), "w", encoding="utf-8",
                          errors="surrogateescape") as file:
                    file.write(content)
                self.assertIsNone(self.store.get(name))
                response = Client(app).request(cookie="connect.sid=" + urllib.parse.quote("s:" + sign(name, SECRET)))
                self.assertEqual((response.code, response.body), (200, b"1"))

    def test_touch_moves_expiry_without_writing_data(self) -> None:
        store = FileStore(self.folder, touch_after=0, now=self.clock)
        now = int(self.clock() * 1000)
        store.set("a", document_expiring_at(now + 60_000, v="current"))
        self.clock.advance(10_000)
        stale = document_expiring_at(int(self.clock() * 1000) + 60_000, v="stale copy")
        self.assertTrue(store.touch("a", stale))
        with open(os.path.join(self.folder, "a.json"), encoding="utf-8") as file:
            written = json.load(file)
        self.assertEqual((written["v"], written["__lastAccess"], written["cookie"]["expires"]),
                         ("current", int(self.clock() * 1000), stale["cookie"]["expires"]))
        self.assertFalse(store.touch("missing", stale))
        self.assertEqual(self.files(), [".a.json.lock", "a.json"])  # the session's lock file stays with it

    def test_an_update_without_a_cookie_keeps_the_cookie_and_last_access(self) -> None:
        store = FileStore(self.folder, ttl=60_000, now=self.clock)   # a websocket's save
        store.set("a", document_expiring_at(None, x=1))              # a browser-session cookie: ttl decides
        written = int(self.clock() * 1000)
        self.clock.advance(30_000)
        self.assertTrue(store.update("a", {"x": 2}, [], None))
        with open(os.path.join(self.folder, "a.json"), encoding="utf-8") as file:
            on_disk = json.load(file)
        self.assertEqual((on_disk["x"], on_disk["__lastAccess"], on_disk["cookie"]),
                         (2, written, document_expiring_at(None)["cookie"]))
        self.clock.advance(30_000)   # 60 s after the last real write: expired, as before the save
        self.assertIsNone(store.get("a"))
        self.assertFalse(store.update("a", {"x": 3}, [], None))

    def test_touch_within_the_tolerance_does_not_rewrite(self) -> None:
        now = int(self.clock() * 1000)
        self.store.set("a", document_expiring_at(now + 60_000, v=1))
        path = os.path.join(self.folder, "a.json")
        self.assertEqual(os.stat(path).st_mtime_ns, now * 1_000_000)  # written "now", by the store's clock
        before = os.stat(path).st_ino
        self.clock.advance(590)   # 1% of the 60 s max age is 600 ms
        self.assertTrue(self.store.touch("a", document_expiring_at(int(self.clock() * 1000) + 60_000)))
        self.assertEqual(os.stat(path).st_ino, before)
        self.clock.advance(20)
        self.assertTrue(self.store.touch("a", document_expiring_at(int(self.clock() * 1000) + 60_000)))
        self.assertNotEqual(os.stat(path).st_ino, before)

    def test_lock_files_go_with_their_sessions(self) -> None:
        now = int(self.clock() * 1000)
        for sid in ("a", "b", "c"):
            self.store.set(sid, document_expiring_at(now + 60_000 if sid != "c" else now + 10, v=1))
            self.assertTrue(self.store.update(sid, {"v": 2}, [], document_expiring_at(now + 60_000)["cookie"]))
        self.assertFalse(self.store.update("never", {"v": 2}, [], document_expiring_at(now + 60_000)["cookie"]))
        self.assertEqual(self.files(), [".a.json.lock", ".b.json.lock", ".c.json.lock", "a.json", "b.json", "c.json"])
        self.store.destroy("a")
        self.assertEqual(self.files(), [".b.json.lock", ".c.json.lock", "b.json", "c.json"])
        with open(os.path.join(self.folder, ".orphan.json.lock"), "w"):
            pass  # left by a process that died between locking and cleaning up
        self.store.set("c", document_expiring_at(now + 10, v=1))
        self.clock.advance(100)
        self.assertEqual(self.store.reap(), 1)
        self.assertEqual(self.files(), [".b.json.lock", "b.json"])
        self.store.clear()
        self.assertEqual(self.files(), [])

    def test_destroy_length_all_clear(self) -> None:
        now = int(self.clock() * 1000)
        self.store.set("a", document_expiring_at(now + 60_000, v=1))
        self.store.set("b", document_expiring_at(now + 60_000, v=2))
        self.store.set("gone", document_expiring_at(now + 10))
        with open(os.path.join(self.folder, "keep.txt"), "w") as file:
            file.write("not ours")
        self.clock.advance(100)
        self.assertEqual(self.store.length(), 2)
        self.assertEqual({sid: doc["v"] for sid, doc in self.store.all().items()}, {"a": 1, "b": 2})
        self.store.destroy("a")
        self.store.destroy("never existed")
        self.assertEqual(self.store.length(), 1)
        self.store.clear()
        self.assertEqual(self.files(), ["keep.txt"])

    def test_fsync_option_flushes_each_write(self) -> None:
        from unittest import mock
        store = FileStore(self.folder, fsync=True, now=self.clock)
        with mock.patch("os.fsync", wraps=os.fsync) as fsync:
            store.set("a", document_expiring_at(int(self.clock() * 1000) + 60_000))
            self.store.set("b", document_expiring_at(int(self.clock() * 1000) + 60_000))
        self.assertEqual(fsync.call_count, 1)

    def test_bad_options(self) -> None:
        for options, message in [({"ttl": 0}, "ttl must be a positive"), ({"touch_after": -1}, "touch_after"),
                                 ({"reap_interval": "1h"}, "reap_interval must be milliseconds"),
                                 ({"reap_interval": 0}, "reap_interval must be a positive")]:
            with self.subTest(options=options), self.assertRaisesRegex((TypeError, ValueError), message):
                FileStore(self.folder, **options)

    def test_threads_never_read_a_partial_document(self) -> None:
        expires = int(time.time() * 1000) + 600_000
        self.store.set("shared", big_document(0, expires))
        barrier = threading.Barrier(6)
        bad: list[Any] = []

        def writer(n: int) -> None:
            barrier.wait(10)
            for i in range(60):
                self.store.set("shared", big_document(n * 1000 + i, expires))

        def reader_thread() -> None:
            barrier.wait(10)
            for _ in range(150):
                document = self.store.get("shared")
                if not consistent(document):
                    bad.append(document)
        self.assertEqual(run_threads([lambda n=n: writer(n) for n in range(3)] + [reader_thread] * 3), [])
        self.assertEqual(bad, [])
        self.assertEqual([name for name in self.files() if name.endswith(".tmp")], [])

    def test_processes_never_read_a_partial_document(self) -> None:
        start = multiprocessing.get_context("spawn").Event()
        processes = [spawn(self, hammer_file_store, self.folder, n, 80, start) for n in range(3)]
        start.set()
        self.assertEqual([exit_code(process, 60) for process in processes], [0, 0, 0])
        self.assertTrue(consistent(FileStore(self.folder).get("shared")))

    def test_a_writer_killed_mid_write_leaves_the_old_file_and_reap_removes_its_leftover(self) -> None:
        expires = int(time.time() * 1000) + 3_600_000
        self.store.set("victim", big_document(1, expires))
        ready = os.path.join(self.folder, "ready.flag")
        process = spawn(self, crash_in_the_middle_of_a_write, self.folder, ready)
        wait_for(lambda: os.path.exists(ready))
        process.kill()
        exit_code(process, 30)
        temporary = [name for name in self.files() if name.endswith(".tmp")]
        self.assertEqual(len(temporary), 1)
        self.assertEqual(self.store.get("victim")["k0"], [1] * 50)  # the old version, whole
        self.clock.advance(bs._STALE_TEMP_MS + 60_000)
        self.assertEqual(self.store.reap(), 1)
        self.assertEqual(self.files(), ["ready.flag", "victim.json"])

    def test_a_writer_killed_at_any_moment_leaves_only_whole_files(self) -> None:
        process = spawn(self, write_until_killed, self.folder)
        # Once every one of the five sessions has been rewritten, kill it wherever it is.
        wait_for(lambda: len([n for n in os.listdir(self.folder) if n.endswith(".json")]) >= 5)
        first = {name: os.stat(os.path.join(self.folder, name)).st_ino for name in self.files()
                 if name.endswith(".json")}
        wait_for(lambda: all(os.stat(os.path.join(self.folder, name)).st_ino != inode
                             for name, inode in first.items()))
        process.kill()
        exit_code(process, 30)
        for name in self.files():
            if name.endswith(".json"):
                self.assertTrue(consistent(self.store.get(name[:-5])), name)
        self.clock.advance(bs._STALE_TEMP_MS + 60_000)
        self.store.reap()
        self.assertEqual([name for name in self.files() if not name.endswith(".json")], [])

    @unittest.skipUnless(sys.platform.startswith("linux"), "RLIMIT_FSIZE behaviour is Linux's")
    def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(self) -> None:
        self.store.set("victim", document_expiring_at(int(time.time() * 1000) + 600_000, v="old"))
        process = spawn(self, write_past_the_file_size_limit, self.folder)
        self.assertEqual(exit_code(process, 60), 0)
        self.assertEqual(self.files(), ["victim.json"])
        self.assertEqual(self.store.get("victim")["v"], "old")


# ---------------------------------------------------------------------------
# §10 What the stores trust
# ---------------------------------------------------------------------------

def node_style_deep_document(levels: int) -> str:
    """A session document Node reads and writes happily, nested deeper than Python's parser goes."""
    return ('{"cookie":{"originalMaxAge":86400000,"expires":null,"httpOnly":true,"path":"/"},"tree":'
            + "[" * levels + "]" * levels + "}")


def make_undeletable(test: unittest.TestCase, path: str) -> None:
    """Make the file at `path` one this process may not delete, until the test's cleanup: the
    immutable attribute as root (who may delete anything else), a read-only folder otherwise."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", path], capture_output=True, check=False).returncode:
            unavailable("chattr +i (the immutable attribute) is not available on this file system")
        test.addCleanup(subprocess.run, [str(chattr), "-i", path], check=False)
        return
    folder = os.path.dirname(path)
    os.chmod(folder, 0o500)
    test.addCleanup(os.chmod, folder, 0o700)


class TestStoreTrust(unittest.TestCase):
    """What a store reads never becomes an error page, a header, or a deleted file."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.clock = Clock(time.time())
        self.store = FileStore(self.folder, now=self.clock)

    def write(self, name: str, content: str, age_ms: int = 0) -> str:
        path = os.path.join(self.folder, name)
        with open(path, "w", encoding="utf-8") as file:
            file.write(content)
        written_ns = int((self.clock() * 1000 - age_ms) * 1_000_000)
        os.utime(path, ns=(written_ns, written_ns))   # by the store's clock
        return path

    def files(self) -> list[str]:
        return sorted(os.listdir(self.folder))

    def test_reap_and_clear_delete_only_this_stores_files(self) -> None:
        now = int(self.clock() * 1000)
        day = 86_400_000
        self.store.set("live", document_expiring_at(now + day, v=1))
        self.store.set("old", document_expiring_at(now + 1000, v=1))
        foreign = {"package.json": '{"name": "app", "dependencies": {}}', "tsconfig.json": '{"compilerOptions": {}}',
                   "data.json": "[1, 2, 3]", "notes.txt": "hello", "config.json.bak": "{}"}
        for name, content in foreign.items():
            self.write(name, content, age_ms=10 * day)
        self.write("broken.json", '{"cookie": {"expires": ', age_ms=2 * day)   # a torn write, two days old
        self.write("fresh.json", '{"cookie": {"exp', age_ms=60_000)               # torn, but recent: maybe not ours
        self.write(".gone.json.lock", "")                                           # a lock whose session is gone
        self.write(f".old.json.{now - 700_000:x}-0123abcd.tmp", "half")            # a crashed writer's, 11 minutes old
        self.write(f".live.json.{now:x}-0123abcd.tmp", "in flight")                # a writer's, right now
        os.mkdir(os.path.join(self.folder, "backup.json"))                          # a folder named as a session
        os.symlink("/etc/hostname", os.path.join(self.folder, "linked.json"))       # a link named as a session
        self.clock.advance(2000)
        self.assertEqual(self.store.reap(), 3)   # old.json, broken.json, the stale temporary file
        kept = [f".live.json.{now:x}-0123abcd.tmp", "backup.json", "fresh.json", "linked.json", "live.json", *foreign]
        self.assertEqual(self.files(), sorted(kept))   # (the orphaned lock file went too)
        self.store.clear()
        self.assertEqual(self.files(), sorted(set(kept) - {"live.json"}))
        self.assertEqual(os.readlink(os.path.join(self.folder, "linked.json")), "/etc/hostname")

    def test_reaping_during_writes_spares_foreign_files_and_never_fails_a_request(self) -> None:
        store = FileStore(self.folder, reap_interval=60_000, now=self.clock)
        for name in ("package.json", "data.json"):
            self.write(name, '{"version": 1}', age_ms=10 * 86_400_000)
        os.mkdir(os.path.join(self.folder, "backup.json"))
        self.write("deep.json", node_style_deep_document(3000))
        self.clock.advance(120_000)   # a reap pass is due: every new visitor's write does a little of it
        client = Client(wsgi(text_app(counter), store=store, now=self.clock))
        for _ in range(10):
            response = Client(wsgi(text_app(counter), store=store, now=self.clock)).request()
            self.assertEqual(response.code, 200)
            self.assertIsNotNone(response.session_cookie())
        self.assertEqual(client.request().body, b"1")
        self.assertTrue({"package.json", "data.json", "backup.json"} <= set(self.files()))
        self.assertEqual(store.length(), 11)

    def test_an_entry_reaping_cannot_delete_is_logged_and_skipped(self) -> None:
        now = int(self.clock() * 1000)
        self.store.set("stuck", document_expiring_at(now + 1000, v=1))
        self.store.set("other", document_expiring_at(now + 1000, v=1))
        self.clock.advance(2000)
        make_undeletable(self, os.path.join(self.folder, "stuck.json"))
        with self.assertLogs("bunway_session", logging.WARNING) as logs:
            reaped = self.store.reap()
        self.assertIn("FileStore skipped 'stuck.json' while cleaning its folder", "\n".join(logs.output))
        self.assertIn("stuck.json", self.files())
        if os.geteuid() == 0:   # (in a read-only folder nothing can go; as root the other one does)
            self.assertEqual((reaped, "other.json" in self.files()), (1, False))

    def test_what_a_file_holds_never_fails_a_request(self) -> None:
        now = int(self.clock() * 1000)
        cases = {
            "deep": node_style_deep_document(1000),
            "deeper": node_style_deep_document(3000),
            "huge_number": '{"cookie": {"originalMaxAge": 1e400, "expires": null}, "v": 1}',
            "huge_number_in_data": ('{"cookie": {"originalMaxAge": null, "expires": null}, "v": 1e400, "__lastAccess": '
                                    + f"{now}}}"),
            "far_max_age": '{"cookie": {"originalMaxAge": 1e300, "expires": null}, "v": 1, "__lastAccess": ' + f"{now}}}",
            "nan_last_access": '{"cookie": {"originalMaxAge": null, "expires": null}, "v": 1, "__lastAccess": NaN}',
            "far_last_access": '{"cookie": {"originalMaxAge": null, "expires": null}, "v": 1, "__lastAccess": 1e300}',
            "not_utf8": '{"cookie": {}, "v": "\\udcff"}',
        }
        app = wsgi(text_app(counter), store=self.store, now=self.clock)
        new_cookies: list[str] = []
        for name, content in cases.items():
            with self.subTest(case=name):
                path = os.path.join(self.folder, name + ".json")
                with open(path, "w", encoding="utf-8", errors="surrogateescape") as file:
                    file.write(content)
                now_ns = int(self.clock() * 1e9)
                os.utime(path, ns=(now_ns, now_ns))   # written now, by the store's clock
                if name != "far_max_age":   # (a session document; its cookie is what is unusable)
                    self.assertIsNone(self.store.get(name))
                response = Client(app).request(cookie="connect.sid=" + urllib.parse.quote("s:" + sign(name, SECRET)))
                self.assertEqual((response.code, response.body), (200, b"1"))
                self.assertNotEqual(sid_of(response.session_cookie()), name)
                new_cookies.append(response.session_cookie())
        # The new sessions, and far_max_age: a session document whose cookie only the request finds unusable.
        self.assertEqual(sorted(self.store.all()), sorted(["far_max_age", *[sid_of(cookie) for cookie in new_cookies]]))
        self.clock.advance(2 * 86_400_000)
        self.store.reap()   # the files that do not parse are torn writes now: gone
        self.assertEqual(sorted(self.files()), [])

    def test_a_folder_others_can_write_is_refused_unless_shared_on_purpose(self) -> None:
        shared = os.path.join(self.folder, "shared")
        os.mkdir(shared)
        for mode in (0o777, 0o775, 0o757):
            os.chmod(shared, mode)
            with self.subTest(mode=oct(mode)), self.assertRaisesRegex(
                    PermissionError, r"writable by its group or by others .*chmod 700 it .*shared_folder=True"):
                FileStore(shared)
        self.assertTrue(FileStore(shared, shared_folder=True).path.endswith("shared"))
        os.chmod(shared, 0o700)
        FileStore(shared)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            os.chown(shared, 65534, 65534)
            with self.assertRaisesRegex(PermissionError, r"belongs to another user \(uid 65534\).*shared_folder=True"):
                FileStore(shared)
        with self.assertRaisesRegex(TypeError, "shared_folder must be True or False"):
            FileStore(shared, shared_folder="yes")

    def test_links_fifos_devices_and_huge_files_are_never_read(self) -> None:
        outside = os.path.join(tempfile.mkdtemp(), "victim.json")
        self.addCleanup(shutil.rmtree, os.path.dirname(outside), True)
        with open(outside, "w") as file:
            file.write(bs._dumps(document_expiring_at(int(self.clock() * 1000) + 60_000, user="victim")))
        os.symlink(outside, os.path.join(self.folder, "linked.json"))
        os.symlink("/dev/zero", os.path.join(self.folder, "zeros.json"))
        live = document_expiring_at(int(self.clock() * 1000) + 60_000, user="victim")
        self.write("huge.json", bs._dumps({**live, "pad": "x" * bs._MAX_FILE_BYTES}))   # a live session, too large
        self.write("small.json", bs._dumps({**live, "pad": "x" * (bs._MAX_FILE_BYTES - 200)}))   # just under the cap
        self.assertEqual(self.store.get("small")["user"], "victim")
        # A FIFO whose buffer already holds a session document: only regular files are read.
        os.mkfifo(os.path.join(self.folder, "piped.json"))
        writer = os.open(os.path.join(self.folder, "piped.json"), os.O_RDWR | os.O_NONBLOCK)
        self.addCleanup(os.close, writer)
        os.write(writer, bs._dumps(live).encode())
        for sid in ("linked", "zeros", "huge", "piped"):
            with self.subTest(sid=sid):
                self.assertIsNone(self.store.get(sid))
        os.mkfifo(os.path.join(self.folder, "fifo.json"))
        code = ("import sys; sys.path.insert(0, sys.argv[1]); import bunway_session as bs; "
                "print(bs.FileStore(sys.argv[2]).get('fifo'))")
        done = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(bs.__file__)), self.folder],
                              capture_output=True, text=True, timeout=30, check=False)   # a FIFO must not hang it
        self.assertEqual((done.returncode, done.stdout.strip()), (0, "None"), done.stderr)

    def test_a_linked_lock_file_is_refused_and_nothing_is_created_where_it_points(self) -> None:
        self.store.set("a", document_expiring_at(int(self.clock() * 1000) + 60_000, v=1))
        target = os.path.join(tempfile.mkdtemp(), "planted")
        self.addCleanup(shutil.rmtree, os.path.dirname(target), True)
        os.symlink(target, os.path.join(self.folder, ".a.json.lock"))
        with self.assertRaisesRegex(OSError, r"lock file .*\.a\.json\.lock' is a symbolic link; FileStore never follows"):
            self.store.update("a", {"v": 2}, [], document_expiring_at(int(self.clock() * 1000) + 60_000)["cookie"])
        self.assertFalse(os.path.exists(target))
        self.assertEqual(self.store.get("a")["v"], 1)

    def test_a_session_too_large_to_read_back_is_refused_when_written(self) -> None:
        self.store.set("a", document_expiring_at(int(self.clock() * 1000) + 60_000, v=1))
        client = Client(wsgi(text_app(lambda s, e: s.update(blob="x" * bs._MAX_FILE_BYTES)),
                             store=self.store, now=self.clock))
        with self.assertRaisesRegex(ValueError, r"over FileStore's limit of 1048576; keep large data elsewhere"):
            client.request(cookie="connect.sid=" + urllib.parse.quote("s:" + sign("a", SECRET)))
        self.assertEqual(self.store.get("a")["v"], 1)

    def test_a_stored_cookie_cannot_inject_headers(self) -> None:
        now = int(self.clock() * 1000)
        poisoned = {
            "path": {"path": "/; HttpOnly\r\nSet-Cookie: admin=1"},
            "path_semicolon": {"path": "/; Domain=evil.example"},
            "domain": {"domain": "example.com\r\nX-Injected: 1"},
            "domain_space": {"domain": "a b"},
            "same_site": {"sameSite": "lax\r\nSet-Cookie: admin=1"},
            "priority": {"priority": "High; admin=1"},
            "expires": {"expires": 12345},
            "original_max_age": {"originalMaxAge": 1e300},
        }
        store = self.store   # a folder other writers share (a Redis would do as well)
        for name, fields in poisoned.items():
            document = document_expiring_at(now + 60_000, user="victim")
            document["cookie"].update(fields)
            self.write(name + ".json", json.dumps({**document, "__lastAccess": now}))
        for rolling, handler in ((True, reader), (False, lambda s, e: destroy(s))):
            app = SessionMiddleware(text_app(handler), secret=SECRET, store=store, now=self.clock, rolling=rolling)
            with LiveServer(app) as live:
                for name in poisoned:
                    with self.subTest(case=name, rolling=rolling):
                        connection = http.client.HTTPConnection("127.0.0.1", int(live.url.rsplit(":", 1)[1]), timeout=10)
                        connection.request("GET", "/", headers={
                            "Cookie": "connect.sid=" + urllib.parse.quote("s:" + sign(name, SECRET))})
                        response = connection.getresponse()
                        body = response.read()
                        headers = response.getheaders()
                        connection.close()
                        self.assertEqual(response.status, 200)
                        self.assertEqual(body, b"ok" if handler is not reader else b"None")  # a new session
                        self.assertEqual([h for h, _ in headers if h.lower() not in ("server", "date", "content-type",
                                                                                     "content-length", "set-cookie")], [])
                        for header, value in headers:
                            if header.lower() == "set-cookie":
                                self.assertNotIn("admin", value)
                                self.assertNotIn("evil", value)
                        with open(os.path.join(self.folder, name + ".json"), encoding="utf-8") as file:
                            self.assertEqual(json.load(file)["user"], "victim")   # left as it was

    def test_expiries_past_the_year_9999_are_refused_where_they_are_set(self) -> None:
        for value in (timedelta(days=365 * 8000), timedelta.max, 10**18):
            with self.subTest(max_age=value), self.assertRaisesRegex(
                    ValueError, "cookie max_age would make the cookie expire after the year 9999"):
                wsgi(text_app(counter), cookie={"max_age": value})
        with self.assertRaisesRegex(ValueError, "cookie expires would make the cookie expire before 1970"):
            wsgi(text_app(counter), cookie={"expires": datetime(1900, 1, 1, tzinfo=UTC)})

        def remember_me(session: Session, environ: dict[str, Any]) -> str:
            for value in (10**18, timedelta.max):
                with self.assertRaisesRegex(ValueError, "cookie.max_age would make the cookie expire after the year 9999"):
                    session.cookie.max_age = value
            with self.assertRaisesRegex(ValueError, "cookie.expires would make the cookie expire before 1970"):
                session.cookie.expires = datetime(1969, 12, 31, tzinfo=UTC)
            session.cookie.expires = datetime(9999, 12, 31, tzinfo=UTC)   # the last day dates can hold: fine
            return "ok"
        response = Client(wsgi(text_app(remember_me))).request()
        self.assertEqual(response.body, b"ok")
        self.assertIn("Expires=Fri, 31 Dec 9999 00:00:00 GMT", response.session_cookie())

    def test_a_long_cookie_is_refused_before_it_is_decoded(self) -> None:
        store = MemoryStore()
        store.set("short-id", document_expiring_at(int(time.time() * 1000) + 60_000, views=7))
        signed = "s:" + sign("short-id", SECRET)
        every_byte_escaped = "".join(f"%{byte:02X}" for byte in signed.encode()) * 1   # decodes to 60 characters
        padded = every_byte_escaped + "%20" * ((4100 - len(every_byte_escaped)) // 3 + 1)
        app = wsgi(text_app(reader), store=store)
        self.assertEqual(Client(app).request(cookie="connect.sid=" + every_byte_escaped).body, b"7")
        self.assertGreater(len(padded), 4096)
        self.assertEqual(Client(app).request(cookie="connect.sid=" + padded).body, b"None")
        self.assertEqual(Client(app).request(cookie="connect.sid=" + "%41" * 35_000).body, b"None")

    def test_last_access_is_reserved(self) -> None:
        def handler(session: Session, environ: dict[str, Any]) -> str:
            for write in (lambda: session.__setitem__("__lastAccess", 1), lambda: session.update(__lastAccess=1),
                          lambda: session.setdefault("__lastAccess", 1)):
                with self.assertRaisesRegex(KeyError, "'__lastAccess' is reserved"):
                    write()
            return "ok"
        self.assertEqual(Client(wsgi(text_app(handler))).request().body, b"ok")


# ---------------------------------------------------------------------------
# §6 Stores: RedisStore, against a real redis-server
# ---------------------------------------------------------------------------

class RedisServer:
    """A private redis-server listening on a unix socket in a temporary folder (no TCP port to
    race for), or REDIS_URL; started once for the module. Redis tests are skipped when
    redis-py or redis-server is missing, unless BUNWAY_REQUIRE_ALL=1 (CI)."""

    process: subprocess.Popen[bytes] | None = None
    folder: str | None = None
    url: str | None = None
    reason = ""

    @classmethod
    def client(cls) -> Any:
        if cls.url is None and not cls.reason:
            cls.start()
        if cls.url is None:
            unavailable(cls.reason)
        import redis
        return redis.Redis.from_url(cls.url)

    @classmethod
    def start(cls) -> None:
        try:
            import redis
        except ImportError:
            cls.reason = "redis-py is not installed (pip install redis)"
            return
        if os.environ.get("REDIS_URL"):
            cls.url = os.environ["REDIS_URL"]
            return
        binary = shutil.which("redis-server")
        if binary is None:
            cls.reason = "redis-server is not installed and REDIS_URL is not set"
            return
        cls.folder = tempfile.mkdtemp()
        socket_path = os.path.join(cls.folder, "redis.sock")
        cls.process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", socket_path, "--unixsocketperm", "700", "--save", "",
             "--appendonly", "no", "--dir", cls.folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = "unix://" + socket_path
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or cls.process.poll() is not None:
                    cls.reason = "redis-server did not start"
                    cls.stop()
                    return
                time.sleep(0.05)
            finally:
                client.close()
        cls.url = url

    @classmethod
    def version(cls) -> str:
        return str(cls.client().info()["redis_version"])

    @classmethod
    def stop(cls) -> None:
        if cls.process is not None:
            stop_process(cls.process)
            cls.process = None
        if cls.folder:
            shutil.rmtree(cls.folder, True)
            cls.folder = None


def tearDownModule() -> None:
    RedisServer.stop()
    PostgresServer.stop()


# Written by the npm package connect-redis 7.1.1 (with redis 4) under express-session 1.19.0:
#   new RedisStore({client}), genid: () => 'nodeRedisSession_0123456789abcde', cookie: {maxAge:
#   3600500}, a route setting views = 3: the key's value, TTL 3601 s, and the Set-Cookie.
NODE_REDIS_SID = "nodeRedisSession_0123456789abcde"
NODE_REDIS_VALUE = ('{"cookie":{"originalMaxAge":3600500,"expires":"2026-11-26T21:44:56.832Z","httpOnly":true,'
                    '"path":"/"},"views":3}')
NODE_REDIS_SET_COOKIE = ("connect.sid=s%3AnodeRedisSession_0123456789abcde.RpQhV5ClPWmxVUAGLqYL6dhxjfGcncy03KdsntM8zwU; "
                         "Path=/; Expires=Thu, 26 Nov 2026 21:44:56 GMT; HttpOnly")
NODE_REDIS_WRITTEN = 1_795_725_896.332   # expires - maxAge


class TTLRecordingClient:
    """A real redis-py client that also notes the TTL of every SET … EX and EXPIRE it sends."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.ttls: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def set(self, key: str, value: Any, **options: Any) -> Any:
        self.ttls.append(("set", options["ex"]))
        return self.client.set(key, value, **options)

    def expire(self, key: str, seconds: int) -> Any:
        self.ttls.append(("expire", seconds))
        return self.client.expire(key, seconds)

    def pipeline(self) -> Any:
        recording = self

        class Pipeline:
            def __init__(self) -> None:
                self.pipe = recording.client.pipeline()

            def __enter__(self) -> Any:
                self.pipe.__enter__()
                return self

            def __exit__(self, *exc: object) -> Any:
                return self.pipe.__exit__(*exc)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.pipe, name)

            def set(self, key: str, value: Any, **options: Any) -> Any:
                recording.ttls.append(("set", options["ex"]))
                return self.pipe.set(key, value, **options)
        return Pipeline()


def redis_client(**options: Any) -> Any:
    import redis
    return redis.Redis.from_url(RedisServer.url or "", **options)


class InterruptedClient:
    """A real redis-py client whose first transaction is interrupted: between WATCH and EXEC,
    `interrupt` writes the watched key from another connection, as a parallel request would."""

    def __init__(self, client: Any, interrupt: Callable[[], Any]) -> None:
        self.client, self.interrupt, self.attempts = client, interrupt, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def pipeline(self) -> Any:
        pipe = self.client.pipeline()
        owner = self
        real_multi = pipe.multi

        def multi() -> Any:
            owner.attempts += 1
            if owner.attempts == 1:
                owner.interrupt()
            return real_multi()
        pipe.multi = multi
        return pipe


class RedisTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.redis = RedisServer.client()
        self.prefix = f"test:{self.id().rsplit('.', 1)[-1]}:"
        self.addCleanup(self.cleanup)
        self.clock = Clock(time.time())
        self.store = RedisStore(self.redis, prefix=self.prefix, now=self.clock)

    def cleanup(self) -> None:
        keys = list(self.redis.scan_iter(match=self.prefix + "*"))
        if keys:
            self.redis.delete(*keys)
        self.redis.close()


class TestRedisStore(RedisTestCase):
    def test_key_value_and_ttl_as_connect_redis_writes_them(self) -> None:
        app = wsgi(text_app(counter), store=self.store, now=self.clock, cookie={"max_age": 3_600_500})
        response = Client(app).request()
        sid = sid_of(response.session_cookie())
        key = self.prefix + sid
        now_ms = int(self.clock() * 1000)
        self.assertEqual(self.redis.get(key).decode(), bs._dumps({
            "cookie": {"originalMaxAge": 3_600_500, "expires": bs._iso_ms(now_ms + 3_600_500), "secure": False,
                       "httpOnly": True, "path": "/", "sameSite": "lax"}, "views": 1}))
        self.assertTrue(3_599_000 < self.redis.pttl(key) <= 3_601_000, self.redis.pttl(key))  # 3601 s: rounded up

    def test_a_value_without_a_cookie_object_or_a_key_that_is_not_utf8_is_no_session(self) -> None:
        now_ms = int(self.clock() * 1000)
        self.redis.set(self.prefix + "nocookie", json.dumps({"views": 1}))
        self.redis.set(self.prefix + "live", bs._dumps(document_expiring_at(now_ms + 60_000, views=2)))
        self.redis.set(self.prefix.encode() + b"\xff\xfe", bs._dumps(document_expiring_at(now_ms + 60_000)))
        with self.assertLogs("bunway_session", "WARNING"):
            self.assertIsNone(self.store.get("nocookie"))
            self.assertEqual(list(self.store.all()), ["live"])
        client = Client(wsgi(text_app(counter), store=self.store, now=self.clock))
        self.assertEqual(client.request(cookie="connect.sid=" + SessionMiddleware(
            text_app(counter), secret=SECRET).cookie_value("nocookie")).body, b"1", "no session: a new one")

    def test_ttl_is_rounded_up_to_whole_seconds_as_connect_redis_does(self) -> None:
        recording = TTLRecordingClient(self.redis)
        store = RedisStore(recording, prefix=self.prefix, now=self.clock)
        app = wsgi(text_app(counter), store=store, now=self.clock, resave=False, cookie={"max_age": 3_600_001})
        client = Client(app)
        client.request()                       # a new session: SET … EX
        self.clock.advance(1)
        client.request(cookie=jar_header(client))   # a change: update, SET … EX in MULTI
        self.clock.advance(1)
        Client(wsgi(text_app(reader), store=store, now=self.clock, resave=False,
                    cookie={"max_age": 3_600_001})).request(cookie=jar_header(client))  # EXPIRE
        # 3,600,001 ms left each time: connect-redis writes 3601 s, never 3600.
        self.assertEqual(recording.ttls, [("set", 3601), ("set", 3601), ("expire", 3601)])

    def test_default_prefix_and_ttl_for_a_browser_session_cookie(self) -> None:
        store = RedisStore(self.redis, now=self.clock)
        self.assertEqual((store.prefix, store.ttl), ("sess:", 86_400_000))
        store.prefix = self.prefix
        store.set("a", document_expiring_at(None, v=1))
        self.assertTrue(86_399_000 < self.redis.pttl(self.prefix + "a") <= 86_400_000)

    def test_reads_a_session_written_by_connect_redis(self) -> None:
        self.redis.set(self.prefix + NODE_REDIS_SID, NODE_REDIS_VALUE, ex=3601)
        clock = Clock(NODE_REDIS_WRITTEN)
        store = RedisStore(self.redis, prefix=self.prefix, now=clock)
        app = wsgi(text_app(counter), store=store, now=clock, resave=False)
        client = Client(app)
        client.cookies["connect.sid"] = NODE_REDIS_SET_COOKIE.split(";")[0].split("=", 1)[1]
        response = client.request()
        self.assertEqual(response.body, b"4")
        self.assertEqual(response.session_cookie(), NODE_REDIS_SET_COOKIE)
        self.assertEqual(json.loads(self.redis.get(self.prefix + NODE_REDIS_SID))["views"], 4)

    def test_touch_extends_the_ttl_and_never_writes_data(self) -> None:
        now = int(self.clock() * 1000)
        self.store.set("a", document_expiring_at(now + 10_000, v="current"))
        stale = document_expiring_at(now + 500_000, v="stale copy")
        self.assertTrue(self.store.touch("a", stale))
        self.assertEqual(json.loads(self.redis.get(self.prefix + "a"))["v"], "current")
        self.assertTrue(499_000 < self.redis.pttl(self.prefix + "a") <= 500_000)
        self.assertFalse(self.store.touch("missing", stale))
        self.assertIsNone(self.redis.get(self.prefix + "missing"))

    def test_a_session_already_expired_is_deleted_not_written(self) -> None:
        now = int(self.clock() * 1000)
        self.store.set("a", document_expiring_at(now + 10_000))
        self.store.set("a", document_expiring_at(now - 1))
        self.assertIsNone(self.redis.get(self.prefix + "a"))
        self.store.set("b", document_expiring_at(now + 10_000))
        self.assertFalse(self.store.touch("b", document_expiring_at(now)))
        self.assertIsNone(self.redis.get(self.prefix + "b"))

    def test_expired_key_is_no_session(self) -> None:
        self.store.set("a", document_expiring_at(int(self.clock() * 1000) + 60_000, v=1))
        self.redis.pexpire(self.prefix + "a", 1)  # Redis expires keys by itself; let it now
        wait_for(lambda: self.redis.exists(self.prefix + "a") == 0, 5)
        self.assertIsNone(self.store.get("a"))

    def test_length_all_clear_by_scan_leave_other_keys_alone(self) -> None:
        store = RedisStore(self.redis, prefix=self.prefix + "[x]*", now=self.clock)
        now = int(self.clock() * 1000)
        for i in range(150):
            store.set(f"s{i}", document_expiring_at(now + 60_000, i=i))
        self.redis.set(self.prefix + "[x]other", "not a session")
        self.redis.set(self.prefix + "x-not-ours", "not a session")
        self.assertEqual(store.length(), 150)
        self.assertEqual(store.all()["s7"]["i"], 7)
        store.destroy("s7")
        store.destroy("never existed")
        self.assertEqual(store.length(), 149)
        store.clear()
        self.assertEqual(store.length(), 0)
        self.assertEqual(self.redis.get(self.prefix + "[x]other"), b"not a session")
        self.assertEqual(self.redis.get(self.prefix + "x-not-ours"), b"not a session")

    def test_str_replies_are_read_too(self) -> None:
        import redis
        decoding = redis.Redis.from_url(RedisServer.url or "", decode_responses=True)
        self.addCleanup(decoding.close)
        store = RedisStore(decoding, prefix=self.prefix, now=self.clock)
        store.set("a", document_expiring_at(int(self.clock() * 1000) + 60_000, v="é"))
        self.assertEqual(store.get("a")["v"], "é")
        self.assertEqual(list(store.all()), ["a"])

    def test_a_value_that_is_not_a_session_is_no_session_and_a_warning(self) -> None:
        deep = node_style_deep_document(100_000)   # deeper than any Python's parser goes
        for name, value in (("junk", "<html>"), ("deep", deep), ("nan", '{"cookie":{},"v":NaN}'),
                            ("array", "[1]")):
            with self.subTest(value=name):
                self.redis.set(self.prefix + name, value)
                with self.assertLogs("bunway_session", logging.WARNING) as logs:
                    self.assertIsNone(self.store.get(name))
                self.assertIn(f"Redis key '{self.prefix}{name}' does not hold a session document", logs.output[0])
                client = Client(wsgi(text_app(counter), store=self.store))
                with self.assertLogs("bunway_session", logging.WARNING):
                    response = client.request(cookie="connect.sid=" + urllib.parse.quote("s:" + sign(name, SECRET)))
                self.assertEqual((response.code, response.body), (200, b"1"))
                self.assertNotEqual(sid_of(response.session_cookie()), name)
                self.assertEqual(self.redis.get(self.prefix + name), value.encode())   # left alone
        with self.assertLogs("bunway_session", logging.WARNING):
            listed = self.store.all()   # the four new sessions; none of the values that are not one
        self.assertEqual((len(listed), {"junk", "deep", "nan", "array"} & set(listed)), (4, set()))

    def test_a_document_nested_as_deep_as_node_writes_never_fails_a_request(self) -> None:
        for levels in (1000, 3000):   # Node reads these; Python 3.13 too, 3.9-3.11 do not
            with self.subTest(levels=levels):
                name = f"deep{levels}"
                self.redis.set(self.prefix + name, node_style_deep_document(levels), ex=600)
                logs: list[str] = []
                handler = logging.Handler()
                handler.emit = lambda record, logs=logs: logs.append(record.getMessage())  # type: ignore[method-assign,misc]
                logging.getLogger("bunway_session").addHandler(handler)
                try:
                    response = Client(wsgi(text_app(lambda s, e: sorted(s)), store=self.store,
                                           secret=LONG_SECRET)).request(
                        cookie="connect.sid=" + urllib.parse.quote("s:" + sign(name, LONG_SECRET)))
                finally:
                    logging.getLogger("bunway_session").removeHandler(handler)
                self.assertEqual(response.code, 200)
                # Either the session (where this Python parses it) or, with a warning, a new one.
                self.assertIn((response.body, bool(logs)), [(b"['tree']", False), (b"[]", True)])

    def test_an_empty_prefix_is_refused(self) -> None:
        for store_class in (RedisStore, bs.AsyncRedisStore):
            with self.subTest(store=store_class.__name__), \
                    self.assertRaisesRegex(ValueError, "prefix must not be empty: its clear"):
                store_class(self.redis, prefix="")

    def test_a_transaction_that_meets_another_write_starts_over(self) -> None:
        self.store.set("a", document_expiring_at(int(self.clock() * 1000) + 60_000, x=1, y=1))
        interloper = redis_client()
        self.addCleanup(interloper.close)
        client = InterruptedClient(self.redis, lambda: interloper.set(
            self.prefix + "a", json.dumps({**self.store.get("a"), "y": "from elsewhere"}), keepttl=True))
        store = RedisStore(client, prefix=self.prefix, now=self.clock)
        self.assertTrue(store.update("a", {"x": 2}, [], document_expiring_at(int(self.clock() * 1000) + 60_000)["cookie"]))
        self.assertEqual(client.attempts, 2)
        stored = self.store.get("a")
        self.assertEqual((stored["x"], stored["y"]), (2, "from elsewhere"))

    def test_an_update_without_a_cookie_keeps_the_ttl(self) -> None:
        self.store.set("a", document_expiring_at(int(self.clock() * 1000) + 500_000, x=1))
        cookie_before = self.store.get("a")["cookie"]
        self.assertTrue(self.store.update("a", {"x": 2}, [], None))
        self.assertTrue(499_000 < self.redis.pttl(self.prefix + "a") <= 500_000)
        self.assertEqual(self.store.get("a")["cookie"], cookie_before)
        self.assertFalse(self.store.update("gone", {"x": 2}, [], None))

    def test_two_app_servers_share_sessions(self) -> None:
        import redis
        other = redis.Redis.from_url(RedisServer.url or "")
        self.addCleanup(other.close)
        server_a = wsgi(text_app(counter), store=RedisStore(self.redis, prefix=self.prefix))
        server_b = wsgi(text_app(counter), store=RedisStore(other, prefix=self.prefix))
        client = Client(server_a)
        self.assertEqual(client.request().body, b"1")
        on_b = Client(server_b)
        on_b.cookies = client.cookies
        self.assertEqual(on_b.request().body, b"2")
        self.assertEqual(client.request().body, b"3")

    def test_a_stopped_redis_fails_the_request_instead_of_starting_an_empty_session(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        down = redis.Redis(unix_socket_path=os.path.join(folder, "nobody-listens.sock"), socket_connect_timeout=2,
                           retry=Retry(NoBackoff(), 0))
        self.addCleanup(down.close)
        app = wsgi(text_app(counter), store=RedisStore(down, prefix=self.prefix))
        with self.assertRaises(redis.ConnectionError):
            Client(app).request(cookie="connect.sid=" + urllib.parse.quote("s:" + sign("someone", SECRET)))
        with LiveServer(app) as live:
            opener, _ = browser()
            self.assertEqual(fetch(opener, live.url + "/")[0], 500)

    def test_client_is_required(self) -> None:
        with self.assertRaisesRegex(TypeError, "RedisStore needs a client"):
            RedisStore(None)


class AsyncRedisTestCase(AsyncTestCase):
    """AsyncRedisStore on a redis.asyncio client of the private redis-server (one a test: a
    client belongs to its event loop)."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        RedisServer.client().close()   # starts the server, or skips
        import redis.asyncio
        self.aredis = redis.asyncio.Redis.from_url(RedisServer.url or "")
        self.prefix = f"atest:{self.id().rsplit('.', 1)[-1]}:"
        self.clock = Clock(time.time())
        self.store = bs.AsyncRedisStore(self.aredis, prefix=self.prefix, now=self.clock)

    async def asyncTearDown(self) -> None:
        keys = [key async for key in self.aredis.scan_iter(match=self.prefix + "*")]
        if keys:
            await self.aredis.delete(*keys)
        await (getattr(self.aredis, "aclose", None) or self.aredis.close)()


class TestAsyncRedisStore(AsyncRedisTestCase):
    async def test_the_same_keys_values_and_ttls_as_redis_store(self) -> None:
        sync = RedisStore(redis_client(), prefix=self.prefix + "sync:", now=self.clock)
        self.addCleanup(sync.client.close)
        document = document_expiring_at(int(self.clock() * 1000) + 3_600_500, views=3, user={"name": "Zoë"})
        await self.store.aset("a", document)
        sync.set("a", document)
        self.assertEqual(await self.aredis.get(self.prefix + "a"), sync.client.get(self.prefix + "sync:a"))
        self.assertEqual(await self.aredis.get(self.prefix + "a"), bs._dumps(document).encode())
        self.assertTrue(3_600_000 < await self.aredis.pttl(self.prefix + "a") <= 3_601_000)   # 3601 s
        self.assertEqual(await self.store.aget("a"), document)
        self.assertIsNone(await self.store.aget("missing"))

    async def test_reads_and_continues_a_session_written_by_connect_redis(self) -> None:
        await self.aredis.set(self.prefix + NODE_REDIS_SID, NODE_REDIS_VALUE, ex=3601)
        clock = Clock(NODE_REDIS_WRITTEN)
        store = bs.AsyncRedisStore(self.aredis, prefix=self.prefix, now=clock)
        client = ASGIClient(asgi(asgi_text_app(counter), store=store, now=clock, resave=False))
        client.cookies["connect.sid"] = NODE_REDIS_SET_COOKIE.split(";")[0].split("=", 1)[1]
        response = await client.arequest()
        self.assertEqual(response.body, b"4")
        self.assertEqual(response.session_cookie(), NODE_REDIS_SET_COOKIE)
        self.assertEqual(json.loads(await self.aredis.get(self.prefix + NODE_REDIS_SID))["views"], 4)

    async def test_atouch_extends_the_ttl_and_never_writes_data(self) -> None:
        now = int(self.clock() * 1000)
        await self.store.aset("a", document_expiring_at(now + 10_000, v="current"))
        self.assertTrue(await self.store.atouch("a", document_expiring_at(now + 500_000, v="stale copy")))
        self.assertEqual(json.loads(await self.aredis.get(self.prefix + "a"))["v"], "current")
        self.assertTrue(499_000 < await self.aredis.pttl(self.prefix + "a") <= 500_000)
        self.assertFalse(await self.store.atouch("missing", document_expiring_at(now + 500_000)))
        self.assertFalse(await self.store.atouch("a", document_expiring_at(now)))   # expired: deleted
        self.assertIsNone(await self.aredis.get(self.prefix + "a"))

    async def test_aupdate_applies_keys_and_starts_over_when_another_write_meets_it(self) -> None:
        now = int(self.clock() * 1000)
        await self.store.aset("a", document_expiring_at(now + 60_000, x=1, y=1, z=1))
        interloper = redis_client()
        self.addCleanup(interloper.close)

        class Interrupted:   # the first transaction meets a write from another connection
            attempts = 0

            def __init__(self, client: Any) -> None:
                self.client = client

            def __getattr__(self, name: str) -> Any:
                return getattr(self.client, name)

            def pipeline(self) -> Any:
                pipe = self.client.pipeline()
                real_multi = pipe.multi
                owner = self

                def multi() -> Any:
                    owner.attempts += 1
                    if owner.attempts == 1:
                        current = json.loads(interloper.get(f"{prefix}a"))
                        interloper.set(f"{prefix}a", json.dumps({**current, "y": "from elsewhere"}), keepttl=True)
                    return real_multi()
                pipe.multi = multi
                return pipe
        prefix = self.prefix
        client = Interrupted(self.aredis)
        store = bs.AsyncRedisStore(client, prefix=self.prefix, now=self.clock)
        cookie = document_expiring_at(now + 90_000)["cookie"]
        self.assertTrue(await store.aupdate("a", {"x": 2}, ["z"], cookie))
        self.assertEqual(client.attempts, 2)
        stored = await self.store.aget("a")
        assert stored is not None
        self.assertEqual({k: v for k, v in stored.items() if k != "cookie"}, {"x": 2, "y": "from elsewhere"})
        self.assertEqual(stored["cookie"], cookie)
        self.assertFalse(await self.store.aupdate("missing", {"x": 2}, [], cookie))
        self.assertTrue(await self.store.aupdate("a", {"w": 1}, [], None))   # a websocket's save
        self.assertTrue(89_000 < await self.aredis.pttl(self.prefix + "a") <= 90_000)   # TTL kept

    async def test_all_length_clear_scan_the_prefix_and_leave_other_keys_alone(self) -> None:
        store = bs.AsyncRedisStore(self.aredis, prefix=self.prefix + "[x]*", now=self.clock)
        now = int(self.clock() * 1000)
        for i in range(150):
            await store.aset(f"s{i}", document_expiring_at(now + 60_000, i=i))
        await self.aredis.set(store.prefix + "other", "not a session")   # under the prefix: listed, skipped
        await self.aredis.set(self.prefix + "x-not-ours", "not a session")
        self.assertEqual(await store.length(), 151)
        with self.assertLogs("bunway_session", logging.WARNING):
            everything = await store.all()
        self.assertEqual((len(everything), everything["s7"]["i"]), (150, 7))
        await store.adestroy("s7")
        await store.adestroy("never existed")
        await store.clear()
        self.assertEqual(await store.length(), 0)
        self.assertEqual(await self.aredis.get(self.prefix + "x-not-ours"), b"not a session")

    async def test_a_value_that_is_not_a_session_is_no_session(self) -> None:
        await self.aredis.set(self.prefix + "junk", "[" * 100_000 + "]" * 100_000)
        with self.assertLogs("bunway_session", logging.WARNING) as logs:
            response = await ASGIClient(asgi(asgi_text_app(counter), store=self.store, secret=LONG_SECRET)).arequest(
                cookie="connect.sid=" + urllib.parse.quote("s:" + sign("junk", LONG_SECRET)))
        self.assertIn("does not hold a session document", logs.output[0])
        self.assertEqual((response.code, response.body), (200, b"1"))
        self.assertEqual(await self.aredis.get(self.prefix + "junk"), ("[" * 100_000 + "]" * 100_000).encode())

    async def test_a_stopped_redis_fails_the_request_instead_of_starting_an_empty_session(self) -> None:
        import redis
        import redis.asyncio
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        down = redis.asyncio.Redis(unix_socket_path=os.path.join(folder, "nobody-listens.sock"),
                                   socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        app = asgi(asgi_text_app(counter), store=bs.AsyncRedisStore(down, prefix=self.prefix))
        send = RecordingSend()
        with self.assertRaises(redis.ConnectionError):
            await app(http_scope(headers={"Cookie": "connect.sid=" + urllib.parse.quote("s:" + sign("someone", SECRET))}),
                      no_body, send)
        self.assertEqual(send.messages, [])
        await (getattr(down, "aclose", None) or down.close)()


# ---------------------------------------------------------------------------
# §8 Concurrent requests: logout is final, touch writes no data, keys don't collide
# ---------------------------------------------------------------------------

class PausedRequest:
    """Request A in its own thread: the session is loaded, then it waits for go() before
    its handler acts, so the test can run request B in between, deterministically."""

    def __init__(self, app: SessionMiddleware, cookie: str, act: Callable[[Session], Any]) -> None:
        self.loaded, self.released = threading.Event(), threading.Event()
        self.response: Response | None = None
        self.error: BaseException | None = None

        def handler(session: Session, environ: dict[str, Any]) -> Any:
            self.loaded.set()
            if not self.released.wait(30):
                raise AssertionError("request A was never released")
            return act(session)

        def run() -> None:
            try:
                self.response = Client(app.__class__(text_app(handler), **app_options(app))).request(cookie=cookie)
            except BaseException as exc:  # noqa: BLE001 - re-raised in finish()
                self.error = exc
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not self.loaded.wait(30):
            raise AssertionError("request A did not load its session")

    def finish(self) -> Response:
        self.released.set()
        self.thread.join(30)
        if self.thread.is_alive():
            raise AssertionError("request A did not finish within 30 s")
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


def app_options(app: SessionMiddleware) -> dict[str, Any]:
    """The options an app was built with, to build another like it around another handler."""
    return {"secret": SECRET, "store": app.store, "resave": app.resave, "rolling": app.rolling,
            "save_uninitialized": app.save_uninitialized}


def set_key(key: str, value: Any) -> Callable[[Session], str]:
    def act(session: Session) -> str:
        session[key] = value
        return "ok"
    return act


def add_own_key(session: Session, environ: dict[str, Any]) -> str:
    session[environ["PATH_INFO"].strip("/")] = True
    return "ok"


def destroy(session: Session) -> str:
    session.destroy()
    return "ok"


def regenerate(session: Session) -> str:
    session.regenerate()
    session["user"] = "alice"
    return session.id


def regenerate_only(session: Session) -> str:
    session.regenerate()
    return session.id


def read_only(session: Session) -> Any:
    return session.get("views")


class ConcurrencyContract:
    """The §8 guarantees, run against each built-in store (subclasses say which)."""

    def make_store(self) -> Any:
        raise NotImplementedError

    def second_store(self) -> Any:
        """A second handle on the same sessions (another process or client would have one)."""
        return self.store

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.store = self.make_store()

    def started(self, **options: Any) -> tuple[SessionMiddleware, str, str]:
        """An app, and a session it has stored (views=1): (app, cookie header, sid)."""
        options.setdefault("resave", False)
        app = wsgi(text_app(counter), store=self.store, **options)
        client = Client(app)
        client.request()
        return app, jar_header(client), sid_of_jar(client)

    def request_b(self, app: SessionMiddleware, cookie: str, handler: Callable[..., Any]) -> Response:
        options = app_options(app)
        options["store"] = self.second_store()
        return Client(SessionMiddleware(text_app(handler), **options)).request(cookie=cookie)

    def stored(self, sid: str) -> dict[str, Any] | None:
        return self.store.get(sid)  # type: ignore[no-any-return]

    def test_logout_is_final_a_slower_save_does_not_resurrect(self) -> None:
        app, cookie, sid = self.started(rolling=True)
        a = PausedRequest(app, cookie, set_key("x", "from A"))
        self.request_b(app, cookie, lambda s, e: destroy(s))
        response = a.finish()
        self.assertIsNone(self.stored(sid))
        self.assertIsNone(response.session_cookie(), "the old cookie must not be set again")

    def test_logout_is_final_for_a_read_only_request_with_resave(self) -> None:
        for resave in (False, True):
            with self.subTest(resave=resave):  # type: ignore[attr-defined]
                app, cookie, sid = self.started(rolling=True, resave=resave)
                a = PausedRequest(app, cookie, read_only)
                self.request_b(app, cookie, lambda s, e: destroy(s))
                response = a.finish()
                self.assertIsNone(self.stored(sid))
                self.assertIsNone(response.session_cookie())

    def test_regenerated_away_session_stays_gone(self) -> None:
        app, cookie, sid = self.started()
        a = PausedRequest(app, cookie, set_key("cart", ["book"]))
        new_sid = self.request_b(app, cookie, lambda s, e: regenerate(s)).body.decode()
        a.finish()
        self.assertIsNone(self.stored(sid))
        self.assertEqual(self.stored(new_sid)["user"], "alice")  # type: ignore[index]

    def test_touch_never_writes_stale_data(self) -> None:
        for resave in (False, True):
            with self.subTest(resave=resave):  # type: ignore[attr-defined]
                app, cookie, sid = self.started(resave=resave)
                a = PausedRequest(app, cookie, read_only)
                self.request_b(app, cookie, lambda s, e: s.update(y=2))
                self.assertEqual(a.finish().body, b"1")
                stored = self.stored(sid)
                assert stored is not None
                self.assertEqual((stored["views"], stored["y"]), (1, 2))

    def test_different_keys_do_not_collide(self) -> None:
        app, cookie, sid = self.started()
        a = PausedRequest(app, cookie, set_key("x", "from A"))
        self.request_b(app, cookie, lambda s, e: s.update(y="from B"))
        a.finish()
        stored = self.stored(sid)
        assert stored is not None
        self.assertEqual((stored["x"], stored["y"], stored["views"]), ("from A", "from B", 1))

    def test_a_key_only_read_is_not_written_back(self) -> None:
        app, cookie, sid = self.started()
        a = PausedRequest(app, cookie, lambda s: s.update(seen=s.get("views")))  # reads views, sets seen
        self.request_b(app, cookie, lambda s, e: s.update(views=5))
        a.finish()
        stored = self.stored(sid)
        assert stored is not None
        self.assertEqual((stored["views"], stored["seen"]), (5, 1))

    def test_deleting_a_key_does_not_undo_another_requests_keys(self) -> None:
        app, cookie, sid = self.started()
        a = PausedRequest(app, cookie, lambda s: s.pop("views"))
        self.request_b(app, cookie, lambda s, e: s.update(y="from B"))
        a.finish()
        stored = self.stored(sid)
        assert stored is not None
        self.assertNotIn("views", stored)
        self.assertEqual(stored["y"], "from B")

    def test_same_key_last_commit_wins(self) -> None:
        app, cookie, sid = self.started()
        a = PausedRequest(app, cookie, set_key("x", "from A"))
        self.request_b(app, cookie, lambda s, e: s.update(x="from B"))
        a.finish()
        self.assertEqual(self.stored(sid)["x"], "from A")  # type: ignore[index]

    def test_soak_eight_threads_each_adding_keys_to_one_session(self) -> None:
        _, cookie, sid = self.started()
        barrier = threading.Barrier(8)

        def worker(n: int) -> None:
            store = self.second_store() if n % 2 else self.store
            client = Client(SessionMiddleware(text_app(add_own_key), secret=SECRET, store=store, resave=False))
            barrier.wait(30)
            for i in range(25):
                client.request(f"/t{n}-{i}", cookie=cookie)
        self.assertEqual(run_threads([lambda n=n: worker(n) for n in range(8)]), [])
        stored = self.stored(sid)
        assert stored is not None
        self.assertEqual({key for key in stored if key.startswith("t")},
                         {f"t{n}-{i}" for n in range(8) for i in range(25)})


class ProcessesContract:
    """Section 8 across processes, for the stores that several processes share on one
    machine or more (subclasses say where: store_spec())."""

    def store_spec(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def test_processes_logout_is_final_and_keys_do_not_collide(self) -> None:
        app, cookie, sid = self.started()  # type: ignore[attr-defined]
        context = multiprocessing.get_context("spawn")
        loaded, go = context.Event(), context.Event()
        child = spawn(self, paused_request_in_a_child, self.store_spec(), cookie, loaded, go, "from_child")  # type: ignore[arg-type]
        self.assertTrue(loaded.wait(60))  # type: ignore[attr-defined]
        self.request_b(app, cookie, lambda s, e: s.update(from_parent=True))  # type: ignore[attr-defined]
        go.set()
        self.assertEqual(exit_code(child, 60), 0)  # type: ignore[attr-defined]
        stored = self.stored(sid)  # type: ignore[attr-defined]
        assert stored is not None
        self.assertEqual((stored["from_child"], stored["from_parent"]), ("child", True))  # type: ignore[attr-defined]

        loaded, go = context.Event(), context.Event()
        child = spawn(self, paused_request_in_a_child, self.store_spec(), cookie, loaded, go, "after_logout")  # type: ignore[arg-type]
        self.assertTrue(loaded.wait(60))  # type: ignore[attr-defined]
        self.request_b(app, cookie, lambda s, e: destroy(s))  # type: ignore[attr-defined]
        go.set()
        self.assertEqual(exit_code(child, 60), 0)  # type: ignore[attr-defined]
        self.assertIsNone(self.stored(sid))  # type: ignore[attr-defined]

    def test_processes_soak_each_adding_keys_to_one_session(self) -> None:
        _, cookie, sid = self.started()  # type: ignore[attr-defined]
        start = multiprocessing.get_context("spawn").Event()
        children = [spawn(self, add_keys_in_a_child, self.store_spec(), cookie, n, 25, start)  # type: ignore[arg-type]
                    for n in range(4)]
        start.set()
        self.assertEqual([exit_code(child, 120) for child in children], [0, 0, 0, 0])  # type: ignore[attr-defined]
        stored = self.stored(sid)  # type: ignore[attr-defined]
        assert stored is not None
        self.assertEqual({key for key in stored if key.startswith("p")},  # type: ignore[attr-defined]
                         {f"p{n}-{i}" for n in range(4) for i in range(25)})


class TestConcurrencyMemoryStore(ConcurrencyContract, unittest.TestCase):
    def make_store(self) -> Any:
        return MemoryStore()


class TestConcurrencyFileStore(ProcessesContract, ConcurrencyContract, unittest.TestCase):
    def make_store(self) -> Any:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)
        return FileStore(self.folder)

    def second_store(self) -> Any:
        return FileStore(self.folder)

    def store_spec(self) -> tuple[Any, ...]:
        return ("file", self.folder)

    def test_processes_logout_is_final_and_keys_do_not_collide(self) -> None:
        super().test_processes_logout_is_final_and_keys_do_not_collide()
        self.assertEqual(os.listdir(self.folder), [])   # no session or lock file is left behind

def store_of(spec: tuple[Any, ...]) -> Any:
    """A store from a picklable description, as a child process builds its own handle."""
    kind = spec[0]
    if kind == "file":
        return FileStore(spec[1])
    if kind == "sqlite":
        return bs.SQLiteStore(spec[1])
    pool = importlib.import_module("psycopg_pool").ConnectionPool(spec[1], min_size=1, max_size=2, open=True)
    return bs.PostgresStore(pool, table=spec[2])


def paused_request_in_a_child(spec: tuple[Any, ...], cookie: str, loaded: Any, go: Any, key: str) -> None:
    """In a child process: request A, paused between loading its session and setting `key`."""
    def handler(session: Session, environ: dict[str, Any]) -> str:
        loaded.set()
        go.wait(60)
        session[key] = "child"
        return "ok"
    app = SessionMiddleware(text_app(handler), secret=SECRET, store=store_of(spec), resave=False, rolling=True)
    response = Client(app).request(cookie=cookie)
    if key == "after_logout" and response.session_cookie() is not None:
        raise SystemExit(4)  # the destroyed session's cookie was set again


def add_keys_in_a_child(spec: tuple[Any, ...], cookie: str, n: int, rounds: int, start: Any) -> None:
    app = SessionMiddleware(text_app(add_own_key), secret=SECRET, store=store_of(spec), resave=False)
    start.wait(60)
    client = Client(app)
    for i in range(rounds):
        client.request(f"/p{n}-{i}", cookie=cookie)


class TestConcurrencyRedisStore(ConcurrencyContract, RedisTestCase):
    """Two clients, as two app servers would have."""

    def make_store(self) -> Any:
        return RedisStore(self.redis, prefix=self.prefix)

    def second_store(self) -> Any:
        import redis
        other = redis.Redis.from_url(RedisServer.url or "")
        self.addCleanup(other.close)
        return RedisStore(other, prefix=self.prefix)


class PausedASGIRequest:
    """Request A on the event loop: its session is loaded, then it awaits go() before its
    handler acts, so the test can run request B in between, in a known order."""

    def __init__(self, app: ASGISessionMiddleware, cookie: str, act: Callable[[Session], Any]) -> None:
        self.loaded, self.released = asyncio.Event(), asyncio.Event()

        async def handler(session: Session, scope: dict[str, Any]) -> Any:
            self.loaded.set()
            await asyncio.wait_for(self.released.wait(), 30)
            return act(session)
        wrapped = ASGISessionMiddleware(asgi_text_app(handler), **asgi_options(app))
        self.task = asyncio.ensure_future(ASGIClient(wrapped).arequest(cookie=cookie))

    async def __aenter__(self) -> Self:
        await asyncio.wait_for(self.loaded.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.released.set()
        if not self.task.done():
            self.task.cancel()

    async def finish(self) -> Response:
        self.released.set()
        return await asyncio.wait_for(self.task, 30)


def asgi_options(app: ASGISessionMiddleware) -> dict[str, Any]:
    return {"secret": SECRET, "store": app.store, "resave": app.resave, "rolling": app.rolling,
            "save_uninitialized": app.save_uninitialized}


class AsyncConcurrencyContract:
    """Section 8's guarantees for requests interleaved on one event loop (and websockets),
    run against each store (subclasses say which)."""

    def make_store(self) -> Any:
        raise NotImplementedError

    async def stored(self, sid: str) -> dict[str, Any] | None:
        store = self.store
        return await store.aget(sid) if hasattr(store, "aget") else store.get(sid)  # type: ignore[no-any-return]

    async def started(self, **options: Any) -> tuple[ASGISessionMiddleware, str, str]:
        options.setdefault("resave", False)
        app = asgi(asgi_text_app(counter), store=self.store, **options)
        client = ASGIClient(app)
        await client.arequest()
        return app, jar_header(client), sid_of_jar(client)

    async def request_b(self, app: ASGISessionMiddleware, cookie: str, handler: Callable[..., Any]) -> Response:
        return await ASGIClient(ASGISessionMiddleware(asgi_text_app(handler), **asgi_options(app))).arequest(
            cookie=cookie)

    async def test_logout_is_final_on_one_loop(self) -> None:
        for resave, act in ((False, set_key("x", "from A")), (True, read_only), (False, read_only)):
            app, cookie, sid = await self.started(rolling=True, resave=resave)
            async with PausedASGIRequest(app, cookie, act) as a:
                await self.request_b(app, cookie, lambda s, e: destroy(s))
                response = await a.finish()
            self.assertIsNone(await self.stored(sid)) 
            self.assertIsNone(response.session_cookie()) 

    async def test_a_regenerated_away_session_stays_gone_on_one_loop(self) -> None:
        app, cookie, sid = await self.started()
        async with PausedASGIRequest(app, cookie, set_key("cart", ["book"])) as a:
            new_sid = (await self.request_b(app, cookie, lambda s, e: regenerate(s))).body.decode()
            await a.finish()
        self.assertIsNone(await self.stored(sid)) 
        self.assertEqual((await self.stored(new_sid) or {}).get("user"), "alice") 

    async def test_touch_never_writes_stale_data_on_one_loop(self) -> None:
        for resave in (False, True):
            app, cookie, sid = await self.started(resave=resave)
            async with PausedASGIRequest(app, cookie, read_only) as a:
                await self.request_b(app, cookie, lambda s, e: s.update(y=2))
                self.assertEqual((await a.finish()).body, b"1") 
            stored = await self.stored(sid) or {}
            self.assertEqual((stored["views"], stored["y"]), (1, 2)) 

    async def test_different_keys_do_not_collide_on_one_loop(self) -> None:
        app, cookie, sid = await self.started()
        async with PausedASGIRequest(app, cookie, lambda s: s.update(x="from A", seen=s.get("views"))) as a:
            await self.request_b(app, cookie, lambda s, e: s.update(y="from B", views=5))
            await a.finish()
        stored = await self.stored(sid) or {}
        # A only read views: B's views stays. Each keeps its own key.
        self.assertEqual((stored["x"], stored["y"], stored["views"], stored["seen"]),
                         ("from A", "from B", 5, 1))

    async def test_deleting_a_key_and_the_same_key_on_one_loop(self) -> None:
        app, cookie, sid = await self.started()
        async with PausedASGIRequest(app, cookie, lambda s: s.pop("views")) as a:
            await self.request_b(app, cookie, lambda s, e: s.update(y="from B"))
            await a.finish()
        stored = await self.stored(sid) or {}
        self.assertEqual(("views" in stored, stored.get("y")), (False, "from B")) 
        async with PausedASGIRequest(app, cookie, set_key("y", "from A")) as a:
            await self.request_b(app, cookie, lambda s, e: s.update(y="from B again"))
            await a.finish()
        self.assertEqual((await self.stored(sid) or {})["y"], "from A") 

    async def test_a_websocket_that_closes_after_logout_does_not_bring_it_back(self) -> None:
        app, cookie, sid = await self.started()
        sockets = asgi(http_and_websocket_app(saving), **asgi_options(app))
        async with WebSocket(sockets, cookie) as socket:
            self.assertEqual(await socket.say("get views"), "1")
            await socket.say("set typing true")
            await self.request_b(app, cookie, lambda s, e: destroy(s))   # logout over HTTP meanwhile
        self.assertIsNone(await self.stored(sid)) 

    async def test_a_websocket_keeps_what_http_did_meanwhile(self) -> None:
        app, cookie, sid = await self.started()
        clock = Clock(time.time() + 60)   # HTTP's new expiry differs from the one the websocket loaded
        sockets = asgi(http_and_websocket_app(saving), **asgi_options(app), now=clock)
        async with WebSocket(sockets, cookie) as socket:
            await socket.say("set typing true")
            await socket.say("set views 100")   # an old copy's key, changed here too
            await ASGIClient(ASGISessionMiddleware(asgi_text_app(lambda s, e: s.update(cart=["book"], views=2)),
                                                   **asgi_options(app), now=clock)).arequest(cookie=cookie)
            after_http = await self.stored(sid) or {}
            clock.advance(5000)
        stored = await self.stored(sid) or {}
        self.assertEqual((stored["typing"], stored["cart"], stored["views"]), (True, ["book"], 100))
        self.assertEqual(stored["cookie"], after_http["cookie"])   # the expiry HTTP set stays


class TestOneLoopMemoryStore(AsyncConcurrencyContract, AsyncTestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()


class TestOneLoopFileStore(AsyncConcurrencyContract, AsyncTestCase):
    def setUp(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        self.store = FileStore(folder)


class TestOneLoopRedisStore(AsyncConcurrencyContract, AsyncTestCase):
    """The sync RedisStore, its calls on worker threads."""

    def setUp(self) -> None:
        client = RedisServer.client()
        self.addCleanup(client.close)
        prefix = f"loop:{self.id().rsplit('.', 1)[-1]}:"
        self.addCleanup(lambda: [client.delete(key) for key in client.scan_iter(match=prefix + "*")])
        self.store = RedisStore(client, prefix=prefix)


class TestOneLoopAsyncRedisStore(AsyncConcurrencyContract, AsyncRedisTestCase):
    pass


class AsyncDictStore:
    """The README's example of a custom async store (sessions in a dict, as an async database
    client would hold them): the five async twins give it every section 8 guarantee."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.lock = asyncio.Lock()   # held across each read-modify-write, as a transaction would be

    async def aget(self, sid: str) -> dict[str, Any] | None:
        document = self.sessions.get(sid)
        return None if document is None else json.loads(json.dumps(document))

    async def aset(self, sid: str, session: dict[str, Any], max_age: int | None = None) -> None:
        self.sessions[sid] = json.loads(json.dumps(session))

    async def adestroy(self, sid: str) -> None:
        self.sessions.pop(sid, None)

    async def atouch(self, sid: str, session: dict[str, Any]) -> bool:
        async with self.lock:
            if sid not in self.sessions:
                return False
            self.sessions[sid]["cookie"] = session["cookie"]   # the expiry only, never the data
            return True

    async def aupdate(self, sid: str, changes: dict[str, Any], deleted: list[str],
                      cookie: dict[str, Any] | None, max_age: int | None = None) -> bool:
        async with self.lock:
            document = self.sessions.get(sid)
            if document is None:
                return False      # destroyed meanwhile: a logout stays final
            document.update(json.loads(json.dumps(changes)))
            for key in deleted:
                document.pop(key, None)
            if cookie is not None:
                document["cookie"] = cookie
            return True


class TestOneLoopAsyncCustomStore(AsyncConcurrencyContract, AsyncTestCase):
    def setUp(self) -> None:
        self.store = AsyncDictStore()


class TestCustomStoreFallback(unittest.TestCase):
    """A store with only get/set/destroy keeps express-session's behaviour: whole documents."""

    def test_only_get_set_destroy_means_whole_document_writes(self) -> None:
        store = RecordingStore(touch=False, update=False)
        app = wsgi(text_app(counter), store=store, resave=False)
        client = Client(app)
        client.request()
        a = PausedRequest(app, jar_header(client), set_key("x", "from A"))
        Client(SessionMiddleware(text_app(lambda s, e: s.update(y=1)), secret=SECRET, store=store,
                                 resave=False)).request(cookie=jar_header(client))
        a.finish()
        stored = store.inner.get(sid_of_jar(client))
        self.assertEqual(("x" in stored, "y" in stored), (True, False))  # last write wins, whole
        self.assertNotIn("update", store.kinds())


if __name__ == "__main__":
    unittest.main()


# ---------------------------------------------------------------------------
# §11 The frameworks' own sessions: Flask (+ Flask-Login), Quart, Django
# ---------------------------------------------------------------------------


class Paused:
    """One request held inside its view (after its session loaded) until released, so another
    request can run meanwhile: real threads, ordered by events."""

    def __init__(self) -> None:
        self.loaded = threading.Event()
        self.released = threading.Event()

    def wait_here(self) -> None:
        self.loaded.set()
        if not self.released.wait(30):
            raise AssertionError("the paused request was never released")

    def run(self, call: Callable[[], Any]) -> Callable[[], Any]:
        """Start `call` on a thread; wait until its view pauses; return its result's getter."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = call()
            except BaseException as error:  # noqa: BLE001 - re-raised by the getter
                box["error"] = error
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        if not self.loaded.wait(30):
            raise AssertionError("the paused request did not reach its view")

        def result() -> Any:
            self.released.set()
            thread.join(30)
            if thread.is_alive():
                raise AssertionError("the paused request did not finish within 30 s")
            if "error" in box:
                raise box["error"]
            return box["result"]
        return result


def flask_login_app(store: Any, **options: Any) -> Any:
    """A Flask app with Flask-Login on FlaskSessionInterface: no app.secret_key at all."""
    flask = optional("flask")
    flask_login = optional("flask_login")
    app = flask.Flask(__name__)
    app.session_interface = bs.FlaskSessionInterface(secret=LONG_SECRET, store=store, **options)
    manager = flask_login.LoginManager(app)
    paused: dict[str, Paused] = {}
    app.config["paused"] = paused

    class User(flask_login.UserMixin):
        def __init__(self, name: str) -> None:
            self.id = name

    manager.user_loader(User)
    session = flask.session

    @app.get("/")
    def home() -> Any:
        session["views"] = session.get("views", 0) + 1
        return {"views": session["views"], "user": flask_login.current_user.get_id()}

    @app.post("/login")
    def login() -> Any:
        flask_login.login_user(User(flask.request.args.get("user", "alice")))
        return {"user": flask_login.current_user.get_id()}

    @app.get("/private")
    @flask_login.login_required
    def private() -> Any:
        return {"user": flask_login.current_user.id}

    @app.post("/logout")
    def logout() -> Any:
        flask_login.logout_user()
        session.destroy()
        return {"ok": True}

    @app.post("/set")
    def set_value() -> Any:
        session[flask.request.args["key"]] = flask.request.args["value"]
        name = flask.request.args.get("pause")
        if name:
            paused[name].wait_here()
        return {"ok": True}

    @app.get("/fail")
    def fail() -> Any:
        session["half"] = "made"
        if flask.request.args.get("logout"):
            session.destroy()
        raise RuntimeError("the view failed")

    @app.get("/mixin")
    def mixin() -> Any:
        before = {"new": session.new, "modified": session.modified, "permanent": session.permanent}
        if flask.request.args.get("permanent") is not None:
            session.permanent = flask.request.args["permanent"] == "1"
        if flask.request.args.get("write"):
            session["written"] = True
        return {**before, "modified_after": session.modified, "is_bunway": isinstance(session._get_current_object(),
                                                                                     Session),
                "same": session._get_current_object() is get_session(flask.request)}

    @app.get("/quiet")
    def quiet() -> Any:
        return {"ok": True}

    @app.post("/others")
    def others() -> Any:   # "log out my other devices"
        return {"ended": session.destroy_other_sessions()}
    return app


def cookie_pair(response: Any) -> str | None:
    """The connect.sid=... pair a framework test client's response sets, or None."""
    for value in response.headers.getlist("Set-Cookie"):
        if value.startswith("connect.sid="):
            return value.split(";", 1)[0]
    return None


class TestFlask(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.app = flask_login_app(self.store)
        self.client = self.app.test_client()

    def sid(self) -> str:
        cookie = self.client.get_cookie("connect.sid")
        assert cookie is not None
        return sid_of("connect.sid=" + cookie.value)

    def test_flask_session_is_the_bunway_session_without_a_secret_key(self) -> None:
        self.assertIsNone(self.app.secret_key)
        response = self.client.get("/mixin?write=1")
        self.assertEqual(response.status_code, 200)
        self.assertTrue(response.json["is_bunway"] and response.json["same"])
        pair = cookie_pair(response)
        self.assertRegex(pair or "", r"^connect\.sid=s%3A[A-Za-z0-9_-]{32}\.")
        stored = self.store.get(self.sid())
        self.assertEqual(stored["written"], True)
        self.assertEqual(stored["cookie"]["originalMaxAge"], 86_400_000)

    def test_flask_login_gets_a_new_id_at_login_and_the_old_one_dies(self) -> None:
        self.assertEqual(self.client.get("/private").status_code, 401)
        self.assertEqual(self.client.get("/").json, {"views": 1, "user": None})
        visitor = self.sid()
        response = self.client.post("/login?user=alice")
        self.assertEqual(response.json, {"user": "alice"})
        member = self.sid()
        self.assertNotEqual(member, visitor, "login_user() must change the session ID")
        self.assertIsNone(self.store.get(visitor), "the pre-login ID must leave the store")
        stored = self.store.get(member)
        self.assertEqual((stored["_user_id"], stored["views"]), ("alice", 1))  # what a Node app reads
        self.assertEqual(self.client.get("/private").json, {"user": "alice"})
        self.assertEqual(self.client.get("/").json, {"views": 2, "user": "alice"})
        self.assertEqual(self.sid(), member, "no new ID while the same user stays logged in")
        planted = self.app.test_client()
        planted.set_cookie("connect.sid", bs.SessionMiddleware(text_app(counter), secret=LONG_SECRET)
                           .cookie_value(visitor))
        self.assertEqual(planted.get("/private").status_code, 401)
        response = self.client.post("/logout")
        self.assertIn("Expires=Thu, 01 Jan 1970 00:00:00 GMT", response.headers["Set-Cookie"])
        self.assertIsNone(self.store.get(member))

    def test_a_flask_login_login_appears_in_its_users_sessions(self) -> None:
        store = MemoryStore(user_key="_user_id")
        app = flask_login_app(store)
        devices = [app.test_client() for _ in range(3)]
        for device in devices:
            device.post("/login?user=alice")
        self.assertEqual(len(store.sessions_of("alice")), 3)
        self.assertEqual(devices[0].post("/others").json, {"ended": 2})
        self.assertEqual(devices[1].get("/private").status_code, 401)
        self.assertEqual(devices[0].get("/private").status_code, 200)

    def test_flask_session_mixin_new_modified_permanent_accessed(self) -> None:
        first = self.client.get("/mixin?write=1").json
        self.assertEqual((first["new"], first["modified"], first["modified_after"]), (True, False, True))
        again = self.client.get("/mixin").json
        self.assertEqual((again["new"], again["modified"], again["permanent"]), (False, False, True))
        response = self.client.get("/mixin?permanent=0")
        self.assertNotIn("Expires=", response.headers["Set-Cookie"], "not permanent: a browser-session cookie")
        self.assertIsNone(self.store.get(self.sid())["cookie"]["originalMaxAge"])
        self.assertFalse(self.client.get("/mixin").json["permanent"])
        response = self.client.get("/mixin?permanent=1")
        self.assertIn("Expires=", response.headers["Set-Cookie"])
        self.assertEqual(self.store.get(self.sid())["cookie"]["originalMaxAge"], 86_400_000)
        self.assertIn("Cookie", response.headers.get("Vary", ""), "a page that read the session varies on it")
        plain = optional("flask").Flask(__name__)   # (Flask-Login reads the session on every request)
        plain.session_interface = bs.FlaskSessionInterface(secret=LONG_SECRET, store=self.store,
                                                           save_uninitialized=False)
        plain.get("/quiet")(lambda: "quiet")
        self.assertNotIn("Cookie", plain.test_client().get("/quiet").headers.get("Vary", ""))
        # With no configured max_age, permanent=True takes the app's PERMANENT_SESSION_LIFETIME.
        app = flask_login_app(MemoryStore(), cookie={"max_age": None})
        client = app.test_client()
        self.assertFalse(client.get("/mixin?write=1").json["permanent"])
        client.get("/mixin?permanent=1")
        stored = app.session_interface.store.all()
        self.assertEqual([d["cookie"]["originalMaxAge"] for d in stored.values()], [31 * 86_400_000])

    def test_flask_unhandled_error_drops_changes_but_a_logout_stays_final(self) -> None:
        self.client.get("/")
        sid = self.sid()
        with self.assertLogs(self.app.logger, "ERROR"):
            self.assertEqual(self.client.get("/fail").status_code, 500)
            self.assertNotIn("half", self.store.get(sid), "the failed request's changes are dropped")
            self.assertEqual(self.client.get("/fail?logout=1").status_code, 500)
        self.assertIsNone(self.store.get(sid), "destroy() before the error still logs out")

    def test_flask_request_outside_the_cookie_path_has_a_session_that_refuses_writes(self) -> None:
        app = flask_login_app(MemoryStore(), cookie={"path": "/admin"})
        with self.assertLogs(app.logger, "ERROR") as logs:
            self.assertEqual(app.test_client().get("/").status_code, 500)
        self.assertIn("outside the session cookie's path", "\n".join(logs.output))
        self.assertEqual(app.test_client().get("/quiet").status_code, 200)
        with app.test_request_context("/"):
            app.preprocess_request()
            null = app.session_interface.make_null_session(app)
            self.assertTrue(app.session_interface.is_null_session(null))
            self.assertIsNone(null.get("views"))
            with self.assertRaisesRegex(RuntimeError, "outside the session cookie's path '/admin'"):
                null["views"] = 1

    def test_flask_parallel_requests_keep_each_others_keys_and_a_logout_is_final(self) -> None:
        self.client.get("/")
        sid = self.sid()
        paused = self.app.config["paused"]
        cookie = self.client.get_cookie("connect.sid").value

        def request(path: str) -> Any:
            other = self.app.test_client()
            other.set_cookie("connect.sid", cookie)
            return other.post(path)
        paused["a"] = Paused()
        a = paused["a"].run(lambda: request("/set?key=x&value=A&pause=a"))
        request("/set?key=y&value=B")
        self.assertEqual(a().status_code, 200)
        stored = self.store.get(sid)
        self.assertEqual((stored["x"], stored["y"], stored["views"]), ("A", "B", 1))
        paused["b"] = Paused()
        b = paused["b"].run(lambda: request("/set?key=z&value=late&pause=b"))
        self.assertEqual(request("/logout").status_code, 200)
        response = b()
        self.assertIsNone(self.store.get(sid), "a slower request must not bring a logged-out session back")
        self.assertIsNone(cookie_pair(response))

    def test_flask_with_flask_login_under_a_real_server(self) -> None:
        with LiveServer(self.app) as live:
            opener, jar = browser()
            self.assertEqual(fetch(opener, live.url + "/private")[0], 401)
            self.assertEqual(json.loads(fetch(opener, live.url + "/")[1]), {"views": 1, "user": None})
            before = {c.name: c.value for c in jar}["connect.sid"]
            self.assertEqual(json.loads(post(opener, live.url + "/login")[1]), {"user": "alice"})
            after = {c.name: c.value for c in jar}["connect.sid"]
            self.assertNotEqual(before, after)
            self.assertEqual(fetch(opener, live.url + "/private"), (200, '{"user":"alice"}\n'))
            self.assertEqual(post(opener, live.url + "/logout")[0], 200)
            self.assertEqual(fetch(opener, live.url + "/private")[0], 401)

    def test_an_interface_on_the_wrong_framework_says_which_one_to_use(self) -> None:
        flask = optional("flask")
        quart = optional("quart")
        with self.assertRaisesRegex(TypeError, r"FlaskSessionInterface is for Flask apps; this is a Quart app: "
                                               r"app\.session_interface = QuartSessionInterface"):
            bs.FlaskSessionInterface(secret=LONG_SECRET).open_session(quart.Quart(__name__), object())
        with self.assertRaisesRegex(TypeError, "QuartSessionInterface is for Quart apps; this is a Flask app"):
            asyncio.run(bs.QuartSessionInterface(secret=LONG_SECRET).open_session(flask.Flask(__name__), object()))
        with self.assertRaisesRegex(TypeError, "not a bunway session: a Flask app takes FlaskSessionInterface"):
            bs.FlaskSessionInterface(secret=LONG_SECRET).is_null_session(object())
        code = ("import sys; sys.modules['flask'] = None; import bunway_session\n"
                "try:\n    bunway_session.FlaskSessionInterface(secret='x' * 32)\n"
                "except ImportError as error:\n    print(error)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              cwd=os.path.dirname(os.path.abspath(bs.__file__)), check=False)
        self.assertIn("FlaskSessionInterface is for Flask apps, and Flask is not installed (pip install flask); "
                      "a Quart app takes QuartSessionInterface", done.stdout, done.stderr)
        with self.assertRaisesRegex(TypeError, "unknown FlaskSessionInterface option 'max_age'"):
            bs.FlaskSessionInterface(secret=LONG_SECRET, max_age=5)
        with self.assertRaisesRegex(TypeError, "secret is required"):
            bs.FlaskSessionInterface()


class ThreadRecordingStore(MemoryStore):
    """A MemoryStore that may block, as far as the adapters know, and records the threads its
    methods run on."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def get(self, sid: str) -> Any:
        self.threads.append(threading.get_ident())
        return super().get(sid)

    def set(self, sid: str, session: dict[str, Any], max_age: int | None = None) -> None:
        self.threads.append(threading.get_ident())
        super().set(sid, session, max_age)

    def update(self, sid: str, changes: Any, deleted: Any, cookie: Any, max_age: Any = None) -> bool:
        self.threads.append(threading.get_ident())
        return super().update(sid, changes, deleted, cookie, max_age)


def quart_app(store: Any, **options: Any) -> Any:
    """A Quart app on QuartSessionInterface: quart.session is the bunway session."""
    quart = optional("quart")
    app = quart.Quart(__name__)
    app.session_interface = bs.QuartSessionInterface(secret=LONG_SECRET, store=store, **options)
    session = quart.session

    @app.get("/")
    async def home() -> Any:
        session["views"] = session.get("views", 0) + 1
        return {"views": session["views"], "user": session.get("_user_id"),
                "loop_thread": threading.get_ident()}

    @app.post("/login")
    async def login() -> Any:
        session["_user_id"] = quart.request.args.get("user", "alice")
        return {"user": session["_user_id"]}

    @app.get("/private")
    async def private() -> Any:
        if "_user_id" not in session:
            return {"error": "who are you?"}, 401
        return {"user": session["_user_id"]}

    @app.post("/logout")
    async def logout() -> Any:
        session.destroy()
        return {"ok": True}

    @app.get("/fail")
    async def fail() -> Any:
        session["half"] = "made"
        if quart.request.args.get("logout"):
            session.destroy()
        raise RuntimeError("the view failed")

    @app.post("/set")
    async def set_value() -> Any:
        session[quart.request.args["key"]] = quart.request.args["value"]
        gate = app.config.get("gate")
        if quart.request.args.get("pause") and gate is not None:
            gate[0].set()
            await asyncio.wait_for(gate[1].wait(), 30)
        return {"ok": True}

    @app.websocket("/ws")
    async def ws() -> None:
        session["from_ws"] = await quart.websocket.receive()
        await quart.websocket.send(json.dumps({"user": session.get("_user_id")}))
    return app


class TestQuart(AsyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.store = MemoryStore()
        self.app = quart_app(self.store)
        self.client = self.app.test_client()

    def sid(self) -> str:
        value = next(c.value for c in self.client.cookie_jar if c.name == "connect.sid")
        return sid_of("connect.sid=" + value)

    async def test_quart_session_login_key_and_logout(self) -> None:
        self.assertEqual((await self.client.get("/private")).status_code, 401)
        response = await self.client.get("/")
        self.assertEqual((await response.get_json())["views"], 1)
        self.assertRegex(cookie_pair(response) or "", r"^connect\.sid=s%3A")
        visitor = self.sid()
        self.assertEqual(await (await self.client.post("/login?user=alice")).get_json(), {"user": "alice"})
        member = self.sid()
        self.assertNotEqual(member, visitor, "setting _user_id is a login: a new ID")
        self.assertIsNone(self.store.get(visitor))
        self.assertEqual((self.store.get(member)["_user_id"], self.store.get(member)["views"]), ("alice", 1))
        self.assertEqual(await (await self.client.get("/private")).get_json(), {"user": "alice"})
        response = await self.client.post("/logout")
        self.assertIn("Expires=Thu, 01 Jan 1970 00:00:00 GMT", response.headers["Set-Cookie"])
        self.assertIsNone(self.store.get(member))

    async def test_quart_websocket_saves_its_changes_key_by_key(self) -> None:
        await self.client.get("/")
        await self.client.post("/login")
        sid = self.sid()
        async with self.client.websocket("/ws") as socket:
            await socket.send("hello")
            self.assertEqual(json.loads(await socket.receive()), {"user": "alice"})
        await asyncio.wait_for(self.wait_for_key(sid, "from_ws"), 30)
        self.assertEqual((self.store.get(sid)["from_ws"], self.store.get(sid)["views"]), ("hello", 1))

    async def wait_for_key(self, sid: str, key: str) -> None:
        while key not in (self.store.get(sid) or {}):   # the handler returns after the client's last read
            await asyncio.sleep(0.01)

    async def test_quart_unhandled_error_drops_changes_but_a_logout_stays_final(self) -> None:
        await self.client.get("/")
        sid = self.sid()
        with self.assertLogs(self.app.logger, "ERROR"):
            self.assertEqual((await self.client.get("/fail")).status_code, 500)
            self.assertNotIn("half", self.store.get(sid))
            self.assertEqual((await self.client.get("/fail?logout=1")).status_code, 500)
        self.assertIsNone(self.store.get(sid), "destroy() before the error still logs out")

    async def test_quart_parallel_requests_keep_each_others_keys_and_a_logout_is_final(self) -> None:
        await self.client.get("/")
        sid = self.sid()
        cookie = next(c.value for c in self.client.cookie_jar if c.name == "connect.sid")

        async def request(path: str) -> Any:
            other = self.app.test_client()
            return await other.post(path, headers={"Cookie": f"connect.sid={cookie}"})
        for b_path, expected in (("/set?key=y&value=B", {"x": "A", "y": "B", "views": 1}), ("/logout", None)):
            loaded, release = asyncio.Event(), asyncio.Event()
            self.app.config["gate"] = (loaded, release)
            a = asyncio.ensure_future(request("/set?key=x&value=A&pause=1"))
            await asyncio.wait_for(loaded.wait(), 30)
            self.app.config["gate"] = None
            self.assertEqual((await request(b_path)).status_code, 200)
            release.set()
            self.assertEqual((await asyncio.wait_for(a, 30)).status_code, 200)
            stored = self.store.get(sid)
            self.assertEqual(None if stored is None else {k: stored[k] for k in ("x", "y", "views")}, expected)

    async def test_quart_calls_a_blocking_store_off_the_loop(self) -> None:
        store = ThreadRecordingStore()
        client = quart_app(store).test_client()
        loop_thread = (await (await client.get("/")).get_json())["loop_thread"]
        await client.get("/")
        self.assertEqual(len(store.threads), 3)   # set; get, update
        self.assertNotIn(loop_thread, store.threads)


class TestQuartEndToEnd(unittest.TestCase):
    def test_quart_login_protected_page_and_logout_under_uvicorn(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        store = FileStore(folder)
        with UvicornServer(quart_app(store)) as live:
            opener, jar = browser()
            self.assertEqual(fetch(opener, live.url + "/private")[0], 401)
            self.assertEqual(json.loads(fetch(opener, live.url + "/")[1])["views"], 1)
            before = {c.name: c.value for c in jar}["connect.sid"]
            self.assertEqual(json.loads(post(opener, live.url + "/login")[1]), {"user": "alice"})
            after = {c.name: c.value for c in jar}["connect.sid"]
            self.assertNotEqual(before, after)
            self.assertIsNone(store.get(sid_of("x=" + before)))
            self.assertEqual(json.loads(fetch(opener, live.url + "/private")[1]), {"user": "alice"})
            self.assertEqual(post(opener, live.url + "/logout")[0], 200)
            self.assertEqual(fetch(opener, live.url + "/private")[0], 401)
            self.assertIsNone(store.get(sid_of("x=" + after)))


# Django: one settings.configure() for the test process (Django allows one), the session engine
# "bunway_session", auth, admin and messages on a SQLite file with a superuser; each test gives
# BUNWAY_SESSION a store of its own with override_settings.
DJANGO_PAUSED: dict[str, Paused] = {}
_DJANGO: dict[str, Any] = {}


def django_ready() -> Any:
    """Configure Django once (or skip without it); returns the django module."""
    django = optional("django")
    if _DJANGO:
        return django
    from django.conf import settings
    folder = tempfile.mkdtemp(prefix="bunway-django-")
    settings.configure(
        DEBUG=False, SECRET_KEY="django-test-key-not-for-sessions", ALLOWED_HOSTS=["127.0.0.1", "testserver"],
        ROOT_URLCONF=__name__, USE_TZ=True,
        INSTALLED_APPS=["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
                        "django.contrib.sessions", "django.contrib.messages"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                    "django.middleware.csrf.CsrfViewMiddleware",
                    "django.contrib.auth.middleware.AuthenticationMiddleware",
                    "django.contrib.messages.middleware.MessageMiddleware"],
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
                    "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                                       "django.contrib.auth.context_processors.auth",
                                                       "django.contrib.messages.context_processors.messages"]}}],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(folder, "db.sqlite3")}},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],   # fast, for tests
        SESSION_ENGINE="bunway_session", SESSION_COOKIE_NAME="connect.sid",
        BUNWAY_SESSION={"secret": LONG_SECRET, "store": MemoryStore()},
    )
    django.setup()
    from django.contrib import admin, auth, messages
    from django.core.management import call_command
    from django.http import HttpResponse, JsonResponse
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    def home(request: Any) -> Any:
        request.session["views"] = request.session.get("views", 0) + 1
        return JsonResponse({"views": request.session["views"], "user": request.user.get_username() or None})

    @csrf_exempt
    def login(request: Any) -> Any:
        user = auth.authenticate(request, username="admin", password="admin password")
        auth.login(request, user)
        messages.info(request, "Welcome back")
        return JsonResponse({"user": request.user.get_username()})

    def private(request: Any) -> Any:
        if not request.user.is_authenticated:
            return JsonResponse({"error": "who are you?"}, status=401)
        return JsonResponse({"user": request.user.get_username(),
                             "messages": [str(m) for m in messages.get_messages(request)]})

    @csrf_exempt
    def logout(request: Any) -> Any:
        auth.logout(request)
        return JsonResponse({"ok": True})

    @csrf_exempt
    def set_value(request: Any) -> Any:
        request.session[request.GET["key"]] = request.GET["value"]
        name = request.GET.get("pause")
        if name:
            DJANGO_PAUSED[name].wait_here()
        return JsonResponse({"ok": True})

    async def async_view(request: Any) -> Any:   # the Django 5.1+ async session methods
        views = await request.session.aget("views", 0)
        await request.session.aset("views", views + 1)
        user = await request.auser()
        return JsonResponse({"views": views + 1, "user": user.get_username() or None})

    globals()["urlpatterns"] = [
        path("admin/", admin.site.urls), path("", home), path("login", login), path("private", private),
        path("logout", logout), path("set", set_value), path("async", async_view),
        path("plain", lambda request: HttpResponse("plain")),
    ]
    call_command("migrate", verbosity=0)
    from django.contrib.auth.models import User
    User.objects.create_superuser("admin", "admin@example.com", "admin password")
    _DJANGO["folder"] = folder
    return django


class DjangoTestCase(unittest.TestCase):
    def setUp(self) -> None:
        django_ready()
        from django.test.utils import override_settings
        self.store = MemoryStore()
        self.settings = override_settings(BUNWAY_SESSION={"secret": LONG_SECRET, "store": self.store})
        self.settings.enable()
        self.addCleanup(self.settings.disable)

    def client(self, **options: Any) -> Any:
        from django.test import Client
        return Client(**options)

    @staticmethod
    def sid(client: Any) -> str:
        return sid_of("connect.sid=" + client.cookies["connect.sid"].value)


class TestDjango(DjangoTestCase):
    def test_settings_errors_name_bunway_session(self) -> None:
        from django.core.exceptions import ImproperlyConfigured
        from django.test.utils import override_settings
        cases = [({"store": self.store}, "BUNWAY_SESSION: secret is required"),
                 ({"secret": LONG_SECRET, "store": object()}, "BUNWAY_SESSION: store must have get, set and destroy"),
                 ({"secret": LONG_SECRET, "store": MemoryStore}, r"BUNWAY_SESSION: store=MemoryStore is a class"),
                 ({"secret": LONG_SECRET, "cookie": {}}, "BUNWAY_SESSION has an unknown key 'cookie'.*SESSION_COOKIE_"),
                 ("a string", "needs BUNWAY_SESSION in settings")]
        for value, message in cases:
            with self.subTest(value=value), override_settings(BUNWAY_SESSION=value), \
                    self.assertRaisesRegex(ImproperlyConfigured, message):
                bs.SessionStore()

    def test_request_session_is_a_plain_json_document_under_the_signed_cookie(self) -> None:
        client = self.client()
        self.assertEqual(client.get("/").json(), {"views": 1, "user": None})
        value = client.cookies["connect.sid"].value
        self.assertRegex(value, r"^s%3A[A-Za-z0-9_-]{32}\.[A-Za-z0-9%]+$")   # what express-session reads
        sid = self.sid(client)
        self.assertEqual(unsign(urllib.parse.unquote(value)[2:], LONG_SECRET), sid)
        stored = self.store.get(sid)
        cookie = stored.pop("cookie")
        self.assertEqual(stored, {"views": 1})
        self.assertEqual({k: cookie[k] for k in ("originalMaxAge", "httpOnly", "path", "sameSite", "secure")},
                         {"originalMaxAge": 1_209_600_000, "httpOnly": True, "path": "/", "sameSite": "lax",
                          "secure": False})
        self.assertEqual(client.get("/").json()["views"], 2)
        from django.test.utils import override_settings
        with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True, SESSION_COOKIE_SAMESITE="Strict",
                               SESSION_COOKIE_HTTPONLY=False, SESSION_COOKIE_DOMAIN="example.com"):
            client.get("/")
        cookie = self.store.get(sid)["cookie"]
        self.assertEqual((cookie["originalMaxAge"], cookie["expires"], cookie["sameSite"], cookie["httpOnly"],
                          cookie["domain"]), (None, None, "strict", False, "example.com"))

    def test_a_document_node_wrote_loads_and_a_tampered_key_is_no_session(self) -> None:
        self.store.set("nodesession", {"cookie": {"originalMaxAge": 60_000, "expires": None, "httpOnly": True,
                                                   "path": "/"}, "fromNode": "yes"})
        key = bs.SessionMiddleware(text_app(counter), secret=LONG_SECRET).cookie_value("nodesession")
        session = bs.SessionStore(key)
        self.assertEqual((session["fromNode"], session.session_key), ("yes", key))
        self.assertIsNone(bs.SessionStore(key[:-3] + "xyz").session_key, "a bad signature is no key")
        self.assertIsNone(bs.SessionStore("nodesession").session_key, "an unsigned ID is no key")
        gone = bs.SessionMiddleware(text_app(counter), secret=LONG_SECRET).cookie_value("nosuchsession")
        self.assertEqual([session.exists(k) for k in (key, key[:-3] + "xyz", "nodesession", gone)],
                         [True, False, False, False])
        # A key signed by an older secret still loads, and is signed again with the current one.
        from django.test.utils import override_settings
        with override_settings(BUNWAY_SESSION={"secret": ["a new secret of more than 32 bytes!", LONG_SECRET],
                                               "store": self.store}):
            session = bs.SessionStore(key)
            self.assertEqual(session["fromNode"], "yes")
            self.assertEqual(unsign(urllib.parse.unquote(session.session_key)[2:],
                                    "a new secret of more than 32 bytes!"), "nodesession")

    def test_login_cycles_the_key_and_the_old_id_leaves_the_store(self) -> None:
        client = self.client()
        client.get("/")
        visitor = self.sid(client)
        self.assertEqual(client.post("/login").json(), {"user": "admin"})
        member = self.sid(client)
        self.assertNotEqual(member, visitor)
        self.assertIsNone(self.store.get(visitor))
        stored = self.store.get(member)
        self.assertEqual((stored["_auth_user_id"], stored["views"]), ("1", 1))  # what a Node app reads
        self.assertEqual(client.get("/private").json(), {"user": "admin", "messages": ["Welcome back"]})
        self.assertEqual(client.get("/private").json()["messages"], [], "a message is shown once")
        planted = self.client()
        planted.cookies["connect.sid"] = bs.SessionMiddleware(text_app(counter), secret=LONG_SECRET) \
            .cookie_value(visitor)
        self.assertEqual(planted.get("/private").status_code, 401)
        self.assertEqual(client.post("/logout").json(), {"ok": True})
        self.assertIsNone(self.store.get(member))
        self.assertEqual(client.get("/private").status_code, 401)

    def test_a_django_login_appears_in_its_users_sessions(self) -> None:
        from django.test.utils import override_settings
        store = MemoryStore(user_key="_auth_user_id")
        with override_settings(BUNWAY_SESSION={"secret": LONG_SECRET, "store": store}):
            clients = [self.client() for _ in range(2)]
            for client in clients:
                client.post("/login")
            self.assertEqual(set(store.sessions_of("1")), {self.sid(client) for client in clients})
            self.assertEqual(store.destroy_sessions_of("1", keep=self.sid(clients[0])), 1)
            self.assertEqual(clients[1].get("/private").status_code, 401)
            self.assertEqual(clients[0].get("/private").status_code, 200)

    def test_parallel_requests_keep_each_others_keys_and_a_logout_is_final(self) -> None:
        client = self.client()
        client.get("/")
        sid = self.sid(client)
        cookie = client.cookies["connect.sid"].value

        def request(path: str) -> Any:
            other = self.client()
            other.cookies["connect.sid"] = cookie
            return other.post(path)
        DJANGO_PAUSED["a"] = Paused()
        a = DJANGO_PAUSED["a"].run(lambda: request("/set?key=x&value=A&pause=a"))
        request("/set?key=y&value=B")
        self.assertEqual(a().status_code, 200)
        stored = self.store.get(sid)
        self.assertEqual((stored["x"], stored["y"], stored["views"]), ("A", "B", 1))
        DJANGO_PAUSED["b"] = Paused()
        b = DJANGO_PAUSED["b"].run(lambda: request("/set?key=z&value=late&pause=b"))
        self.assertEqual(request("/logout").status_code, 200)
        with self.assertLogs("django", "WARNING") as logs:
            response = b()
        self.assertIn("session was deleted before the request completed", "\n".join(logs.output))
        self.assertEqual(response.status_code, 400, "Django answers SessionInterrupted, as its own backends")
        self.assertIsNone(self.store.get(sid), "a slower request must not bring a logged-out session back")

    def needs_async_sessions(self) -> None:
        import django
        if django.VERSION < (5, 1):   # (Django 4.2 LTS, the one Python 3.9 has, is sync only)
            self.skipTest(f"Django {django.get_version()} has no async session methods (5.1 added them)")

    def test_async_methods_await_an_async_store_and_sync_ones_refuse_to_block_the_loop(self) -> None:
        self.needs_async_sessions()
        from django.test.utils import override_settings
        store = AsyncDictStore()
        with override_settings(BUNWAY_SESSION={"secret": LONG_SECRET, "store": store}):
            async def flow() -> tuple[Any, Any]:
                session = bs.SessionStore()
                await session.aset("views", 1)
                await session.acycle_key()
                first = session.session_key
                await session.asave()
                again = bs.SessionStore(first)
                return first, (await again.aget("views"), await again.aexists(first))
            key, (views, exists) = asyncio.run(flow())
            self.assertEqual((views, exists), (1, True))
            self.assertEqual(list(store.sessions), [sid_of("connect.sid=" + key)])
            session = bs.SessionStore(key)   # sync, off the loop: asgiref runs the async store
            self.assertEqual(session["views"], 1)
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        with override_settings(BUNWAY_SESSION={"secret": LONG_SECRET, "store": FileStore(folder)}):
            async def on_the_loop() -> None:
                from django.core.exceptions import SynchronousOnlyOperation
                session = bs.SessionStore()
                with self.assertRaisesRegex(SynchronousOnlyOperation, r"await request\.session\.aget"):
                    session.save()
                await session.asave()
            asyncio.run(on_the_loop())

    def test_admin_login_with_csrf_messages_and_logout_under_wsgiref(self) -> None:
        from django.core.wsgi import get_wsgi_application
        with LiveServer(get_wsgi_application()) as live:
            opener, jar = browser()
            status, page = fetch(opener, live.url + "/admin/login/?next=/admin/")
            self.assertEqual(status, 200)
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            self.assertEqual(fetch(opener, live.url + "/")[0], 200)
            before = {c.name: c.value for c in jar}["connect.sid"]
            form = urllib.parse.urlencode({"username": "admin", "password": "admin password", "next": "/admin/",
                                           "csrfmiddlewaretoken": token}).encode()
            status, page = fetch(opener, live.url + "/admin/login/?next=/admin/", form)
            self.assertEqual(status, 200)
            self.assertIn("Site administration", page)
            after = {c.name: c.value for c in jar}["connect.sid"]
            self.assertNotEqual(after, before, "the admin login must change the session ID")
            self.assertIsNone(self.store.get(sid_of("x=" + before)))
            self.assertEqual(self.store.get(sid_of("x=" + after))["_auth_user_id"], "1")
            self.assertEqual(json.loads(fetch(opener, live.url + "/private")[1])["user"], "admin")
            self.assertEqual(post(opener, live.url + "/logout")[0], 200)
            self.assertEqual(fetch(opener, live.url + "/private")[0], 401)

    def test_async_view_and_login_under_uvicorn(self) -> None:
        self.needs_async_sessions()
        from django.core.asgi import get_asgi_application
        with UvicornServer(get_asgi_application()) as live:
            opener, jar = browser()
            self.assertEqual(json.loads(fetch(opener, live.url + "/async")[1]), {"views": 1, "user": None})
            self.assertEqual(json.loads(fetch(opener, live.url + "/async")[1]), {"views": 2, "user": None})
            before = {c.name: c.value for c in jar}["connect.sid"]
            self.assertEqual(json.loads(post(opener, live.url + "/login")[1]), {"user": "admin"})
            after = {c.name: c.value for c in jar}["connect.sid"]
            self.assertNotEqual(after, before)
            self.assertIsNone(self.store.get(sid_of("x=" + before)))
            self.assertEqual(json.loads(fetch(opener, live.url + "/async")[1]), {"views": 3, "user": "admin"})
            self.assertEqual(post(opener, live.url + "/logout")[0], 200)
            self.assertEqual(fetch(opener, live.url + "/private")[0], 401)


# ---------------------------------------------------------------------------
# §12 SQL stores: SQLiteStore, PostgresStore, AsyncPostgresStore; the store contract
# ---------------------------------------------------------------------------

class PostgresServer:
    """BUNWAY_PG_DSN (.ci/run starts one cluster for every run), or else a private cluster
    started once for the module by .ci/postgres (initdb, a unix socket in a temporary folder).
    PostgreSQL tests are skipped without psycopg or PostgreSQL, unless BUNWAY_REQUIRE_ALL=1."""

    dsn: str | None = None
    folder: str | None = None
    reason = ""
    shared_pool: Any = None

    @classmethod
    def pool(cls) -> Any:
        """A psycopg ConnectionPool on the server, shared by the module's tests."""
        psycopg_pool = optional("psycopg_pool")
        optional("psycopg")
        if cls.dsn is None and not cls.reason:
            cls.start()
        if cls.dsn is None:
            unavailable(cls.reason)
        if cls.shared_pool is None:
            cls.shared_pool = psycopg_pool.ConnectionPool(cls.dsn, min_size=1, max_size=12, open=True)
        return cls.shared_pool

    @classmethod
    def start(cls) -> None:
        if os.environ.get("BUNWAY_PG_DSN"):
            cls.dsn = os.environ["BUNWAY_PG_DSN"]
            return
        script = os.path.join(os.path.dirname(os.path.abspath(bs.__file__)), ".ci", "postgres")
        cls.folder = tempfile.mkdtemp(prefix="bunway-pg-")
        done = subprocess.run([script, "start", cls.folder], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            cls.reason = f"PostgreSQL could not start here: {done.stderr.strip()[-300:]}"
            shutil.rmtree(cls.folder, True)
            cls.folder = None
            return
        cls.dsn = done.stdout.strip()

    @classmethod
    def version(cls) -> str:
        with cls.pool().connection() as connection:
            return str(connection.execute("SHOW server_version").fetchone()[0])

    @classmethod
    def stop(cls) -> None:
        if cls.shared_pool is not None:
            cls.shared_pool.close()
            cls.shared_pool = None
        if cls.folder:
            script = os.path.join(os.path.dirname(os.path.abspath(bs.__file__)), ".ci", "postgres")
            subprocess.run([script, "stop", cls.folder], capture_output=True, timeout=120, check=False)
            shutil.rmtree(cls.folder, True)
            cls.folder = None


def postgres_table(test: unittest.TestCase) -> str:
    """A table of the test's own (dropped after it), so tests and runs never share rows."""
    table = "t_" + secrets.token_hex(6)
    pool = PostgresServer.pool()

    def drop() -> None:
        with pool.connection() as connection:
            connection.execute(f'DROP TABLE IF EXISTS "{table}"')
    test.addCleanup(drop)
    return table


class LoopThread:
    """An event loop on a thread of its own, for driving an async store from sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


class SyncFacade:
    """An async store's twins as the sync store interface (run on a LoopThread), so the store
    contract runs unchanged against AsyncPostgresStore."""

    def __init__(self, store: Any, loop: LoopThread) -> None:
        self.store, self.loop = store, loop

    def __getattr__(self, name: str) -> Any:
        twin = getattr(self.store, "a" + name, None) or getattr(self.store, name)
        return lambda *arguments: self.loop.run(twin(*arguments))


def session_document(expires_ms: int | None, **data: Any) -> dict[str, Any]:
    return {"cookie": {"originalMaxAge": None if expires_ms is None else 60_000,
                       "expires": None if expires_ms is None else bs._iso_ms(expires_ms),
                       "secure": False, "httpOnly": True, "path": "/", "sameSite": "lax"}, **data}


class StoreContract:
    """What every store does (sections 6, 8 and 10), on the store's own clock: subclasses say
    which store (make_store) and how to plant a raw stored value (plant)."""

    def make_store(self, clock: Clock) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.clock = Clock(time.time())
        self.store = self.make_store(self.clock)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def test_round_trip(self) -> None:
        document = session_document(self.now_ms() + 60_000, views=1, cart=["a", {"b": None}], name="é😀")
        self.store.set("s1", document, 60_000)
        self.assertEqual(self.store.get("s1"), document)  # type: ignore[attr-defined]
        self.assertIsNone(self.store.get("unknown"))  # type: ignore[attr-defined]
        self.store.destroy("s1")
        self.store.destroy("never there")
        self.assertIsNone(self.store.get("s1"))  # type: ignore[attr-defined]

    def test_expiry_by_the_clock(self) -> None:
        start = self.now_ms()
        self.store.set("timed", session_document(start + 5_000))
        self.store.set("browser", session_document(None))     # no cookie expiry: ttl after the last write
        self.clock.advance(3_000)
        self.assertIsNotNone(self.store.get("timed"))  # type: ignore[attr-defined]
        self.clock.advance(3_000)
        self.assertIsNone(self.store.get("timed"))  # type: ignore[attr-defined]
        self.clock.advance(50_000)
        self.assertIsNotNone(self.store.get("browser"))  # type: ignore[attr-defined]
        self.clock.advance(5_000)
        self.assertIsNone(self.store.get("browser"))  # type: ignore[attr-defined]
        self.assertEqual((self.store.all(), self.store.length()), ({}, 0))  # type: ignore[attr-defined]

    def test_touch_moves_the_expiry_only_and_makes_no_row(self) -> None:
        start = self.now_ms()
        self.store.set("s", session_document(start + 5_000, v=1))
        self.assertTrue(self.store.touch("s", session_document(start + 30_000, v="a stale copy")))  # type: ignore[attr-defined]
        self.clock.advance(10_000)
        stored = self.store.get("s")
        self.assertEqual(stored["v"], 1, "a touch never writes data")  # type: ignore[attr-defined]
        self.assertFalse(self.store.touch("unknown", session_document(start + 30_000)))  # type: ignore[attr-defined]
        self.assertIsNone(self.store.get("unknown"))  # type: ignore[attr-defined]

    def test_update_merges_this_requests_keys_or_reports_the_session_gone(self) -> None:
        start = self.now_ms()
        self.store.set("s", session_document(start + 5_000, a=1, b=2, c=3))
        cookie = session_document(start + 60_000)["cookie"]
        self.assertTrue(self.store.update("s", {"a": 10, "d": 4}, ["b", "missing"], cookie, 60_000))  # type: ignore[attr-defined]
        self.assertEqual(self.store.get("s"), {"cookie": cookie, "a": 10, "c": 3, "d": 4})  # type: ignore[attr-defined]
        self.clock.advance(10_000)
        self.assertIsNotNone(self.store.get("s"), "the new cookie's expiry counts")  # type: ignore[attr-defined]
        self.assertFalse(self.store.update("gone", {"a": 1}, [], cookie, 60_000))  # type: ignore[attr-defined]
        self.assertIsNone(self.store.get("gone"), "an update of a missing session writes nothing")  # type: ignore[attr-defined]
        self.store.destroy("s")
        self.assertFalse(self.store.update("s", {"a": 1}, [], cookie, 60_000))  # type: ignore[attr-defined]
        self.assertIsNone(self.store.get("s"))  # type: ignore[attr-defined]

    def test_update_without_a_cookie_keeps_the_stored_cookie_and_expiry(self) -> None:
        start = self.now_ms()
        document = session_document(start + 5_000, a=1)
        self.store.set("s", document)
        self.assertTrue(self.store.update("s", {"ws": True}, [], None, None))  # type: ignore[attr-defined]
        self.assertEqual(self.store.get("s"), {**document, "ws": True})  # type: ignore[attr-defined]
        self.clock.advance(6_000)
        self.assertIsNone(self.store.get("s"), "the stored expiry stayed")  # type: ignore[attr-defined]

    def test_an_expired_session_is_not_updated(self) -> None:
        self.store.set("s", session_document(self.now_ms() + 2_000, a=1))
        self.clock.advance(4_000)
        self.assertFalse(self.store.update("s", {"a": 2}, [], session_document(self.now_ms() + 60_000)["cookie"]))  # type: ignore[attr-defined]
        self.assertIsNone(self.store.get("s"))  # type: ignore[attr-defined]

    def test_all_length_and_clear(self) -> None:
        start = self.now_ms()
        for n in range(3):
            self.store.set(f"s{n}", session_document(start + 60_000, n=n))
        self.store.set("short", session_document(start + 2_000))
        self.clock.advance(4_000)
        everything = self.store.all()
        self.assertEqual({sid: document["n"] for sid, document in everything.items()}, {"s0": 0, "s1": 1, "s2": 2})  # type: ignore[attr-defined]
        self.assertEqual(self.store.length(), 3)  # type: ignore[attr-defined]
        self.store.clear()
        self.assertEqual((self.store.all(), self.store.length()), ({}, 0))  # type: ignore[attr-defined]

class StoredValueTrust:
    """Section 10 for the stores that hold what others wrote (files, rows): a stored value that
    is no session is no session, never an error page. Subclasses say how to plant one."""

    def plant(self, sid: str, raw: str, expires_ms: int) -> bool:
        """Store `raw` as the stored value of `sid`; False when the store cannot hold it at all."""
        raise NotImplementedError

    def test_a_stored_value_that_is_no_session_is_no_session(self) -> None:
        live = bs._iso_ms(int(self.clock() * 1000) + 60_000)
        values = {"junk": "not json{", "array": "[1, 2]", "nan": '{"cookie": {}, "v": NaN}',
                  "deep": "[" * 100_000 + "]" * 100_000, "nocookie": '{"views": 1}',
                  "huge": '{"cookie": {}, "v": 1e999}',
                  "header": json.dumps({"cookie": {"expires": live, "path": "/; Secure=no"}, "v": 1})}
        planted = [sid for sid, raw in values.items() if self.plant(sid, raw, int(self.clock() * 1000) + 60_000)]
        self.assertGreaterEqual(len(planted), 4)  # type: ignore[attr-defined]
        self.store.set("good", session_document(int(self.clock() * 1000) + 60_000, v=1))
        for sid in planted:
            if sid != "header":   # (a document with a cookie object: the lifecycle judges the cookie)
                self.assertIsNone(self.store.get(sid), sid)  # type: ignore[attr-defined]
        self.assertEqual(set(self.store.all()), {"good"} | ({"header"} & set(planted)))  # type: ignore[attr-defined]
        app = SessionMiddleware(text_app(counter), secret=LONG_SECRET, store=self.store)
        for sid in planted:
            response = Client(app).request(cookie="connect.sid=" + app.cookie_value(sid))
            self.assertEqual((response.code, response.body), (200, b"1"), sid)  # type: ignore[attr-defined]
            self.assertNotEqual(sid_of(response.session_cookie() or "x=s%3Ax.y"), sid)  # type: ignore[attr-defined]


class TestStoreContractMemoryStore(StoreContract, unittest.TestCase):
    def make_store(self, clock: Clock) -> Any:
        return MemoryStore(ttl=60_000, now=clock)


class TestStoreContractFileStore(StoredValueTrust, StoreContract, unittest.TestCase):
    def make_store(self, clock: Clock) -> Any:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)
        return FileStore(self.folder, ttl=60_000, touch_after=0, now=clock)

    def plant(self, sid: str, raw: str, expires_ms: int) -> bool:
        with open(os.path.join(self.folder, sid + ".json"), "w", encoding="utf-8") as file:
            file.write(raw)
        return True


class TestStoreContractSQLiteStore(StoredValueTrust, StoreContract, unittest.TestCase):
    def make_store(self, clock: Clock) -> Any:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        self.path = os.path.join(folder, "sessions.sqlite3")
        return bs.SQLiteStore(self.path, ttl=60_000, touch_after=0, now=clock)

    def plant(self, sid: str, raw: str, expires_ms: int) -> bool:
        import sqlite3
        with contextlib.closing(sqlite3.connect(self.path)) as connection, connection:
            connection.execute("INSERT INTO sessions (sid, expired, sess) VALUES (?, ?, ?)", (sid, expires_ms, raw))
        return True


class TestStoreContractPostgresStore(StoredValueTrust, StoreContract, unittest.TestCase):
    def make_store(self, clock: Clock) -> Any:
        self.table = postgres_table(self)
        return bs.PostgresStore(PostgresServer.pool(), table=self.table, ttl=60_000, create_table=True,
                                touch_after=0, now=clock)

    def plant(self, sid: str, raw: str, expires_ms: int) -> bool:
        psycopg = optional("psycopg")
        try:
            with PostgresServer.pool().connection() as connection:
                connection.execute(f'INSERT INTO "{self.table}" (sid, sess, expire) VALUES (%s, %s::json, '
                                   f"to_timestamp(%s))", (sid, raw, expires_ms // 1000 + 1))
        except psycopg.Error:   # PostgreSQL's json refuses it: no such row can exist
            return False
        return True


class TestStoreContractAsyncPostgresStore(StoreContract, unittest.TestCase):
    def make_store(self, clock: Clock) -> Any:
        PostgresServer.pool()
        psycopg_pool = optional("psycopg_pool")
        self.loop = LoopThread()
        self.addCleanup(self.loop.close)
        self.table = postgres_table(self)

        async def open_pool() -> Any:
            pool = psycopg_pool.AsyncConnectionPool(PostgresServer.dsn, min_size=1, max_size=4, open=False)
            await pool.open()
            return pool
        pool = self.loop.run(open_pool())
        self.addCleanup(lambda: self.loop.run(pool.close()))
        return SyncFacade(bs.AsyncPostgresStore(pool, table=self.table, ttl=60_000, create_table=True,
                                                touch_after=0, now=clock), self.loop)
class TestSQLiteStore(unittest.TestCase):
    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.path = os.path.join(self.folder, "sessions.sqlite3")

    def query(self, sql: str, *parameters: Any) -> list[Any]:
        import sqlite3
        with contextlib.closing(sqlite3.connect(self.path)) as connection, connection:
            return connection.execute(sql, parameters).fetchall()

    def test_rows_are_connect_sqlite3s(self) -> None:
        clock = Clock()
        app = wsgi(text_app(counter), store=bs.SQLiteStore(self.path, now=clock), now=clock,
                   cookie={"max_age": 3_600_000})
        sid = sid_of(Client(app).request().session_cookie() or "")
        self.assertEqual([tuple(row) for row in self.query("SELECT name, type, pk FROM pragma_table_info('sessions')")],
                         [("sid", "", 1), ("expired", "", 0), ("sess", "", 0)])   # connect-sqlite3's CREATE TABLE
        [(expired, sess)] = self.query("SELECT expired, sess FROM sessions WHERE sid = ?", sid)
        self.assertEqual(expired, int(clock() * 1000) + 3_600_000)     # epoch ms, from cookie.expires
        self.assertEqual(json.loads(sess)["views"], 1)
        self.assertEqual(sess, bs._dumps(json.loads(sess)))   # the document as JSON text, as JSON.stringify

    def test_a_save_keeps_a_rows_other_columns_and_a_new_row_gets_the_defaults(self) -> None:
        self.query("CREATE TABLE sessions (sid PRIMARY KEY, expired, sess, created DEFAULT 'by default', note)")
        store = bs.SQLiteStore(self.path)
        store.set("a", session_document(int(time.time() * 1000) + 60_000, v=1))
        self.query("UPDATE sessions SET note = 'from node' WHERE sid = 'a'")
        store.set("a", session_document(int(time.time() * 1000) + 60_000, v=2))
        store.update("a", {"w": 1}, [], session_document(int(time.time() * 1000) + 60_000)["cookie"])
        self.assertEqual(self.query("SELECT created, note FROM sessions"), [("by default", "from node")])

    def test_setup_errors_name_the_problem(self) -> None:
        with self.assertRaisesRegex(ValueError, "in-memory database is one per connection"):
            bs.SQLiteStore(":memory:")
        with self.assertRaisesRegex(Exception, r"SQLiteStore cannot use .*nowhere.*folder that exists"):
            bs.SQLiteStore(os.path.join(self.folder, "nowhere", "s.sqlite3"))
        with open(self.path, "w", encoding="utf-8") as file:
            file.write("this is not a database, but it is long enough to look like a file header" * 20)
        with self.assertRaisesRegex(Exception, "SQLiteStore cannot use"):
            bs.SQLiteStore(self.path)
        os.unlink(self.path)
        self.query("CREATE TABLE other (id INTEGER)")
        with self.assertRaisesRegex(Exception, r"connect-sqlite3's table \(sid, expired, sess\)"):
            bs.SQLiteStore(self.path, table="other")
        for table in ("a b", "x; DROP TABLE y", "", 'q"uote', "a.b.c", 5):
            with self.subTest(table=table), self.assertRaisesRegex(ValueError, "SQLiteStore table must be a plain SQL name"):
                bs.SQLiteStore(self.path, table=table)  # type: ignore[arg-type]

    def test_wal_and_a_busy_timeout_that_outlasts_a_slow_writer(self) -> None:
        store = bs.SQLiteStore(self.path)
        with store._connection() as connection:
            self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
            self.assertEqual(connection.execute("PRAGMA busy_timeout").fetchone()[0], 10_000)
        with bs.SQLiteStore(self.path, busy_timeout=2500)._connection() as connection:
            self.assertEqual(connection.execute("PRAGMA busy_timeout").fetchone()[0], 2500)
        # A writer holding the lock: a save waits for it (the busy timeout), then goes through.
        import sqlite3
        holder = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")
        saved = threading.Event()
        thread = threading.Thread(target=lambda: (store.set("w", session_document(None)), saved.set()), daemon=True)
        thread.start()
        self.assertFalse(saved.is_set())
        holder.execute("COMMIT")
        thread.join(30)
        self.assertTrue(saved.is_set())
        self.assertIsNotNone(store.get("w"))

    def test_expired_rows_are_pruned_a_bounded_batch_at_a_time(self) -> None:
        clock = Clock()
        store = bs.SQLiteStore(self.path, now=clock)
        start = int(clock() * 1000)
        for n in range(250):
            store.set(f"old{n}", session_document(start + 1_000))
        clock.advance(61_000)   # past the expiry, and past the minute between prunes
        counts = []
        for n in range(4):
            store.set(f"new{n}", session_document(start + 600_000))
            counts.append(self.query("SELECT count(*) FROM sessions WHERE sid LIKE 'old%'")[0][0])
        self.assertEqual(counts, [150, 50, 0, 0])   # 100 a write while there are more, then once a minute
        self.assertEqual(self.query("SELECT name FROM pragma_index_list('sessions') WHERE name = 'sessions_expired'"),
                         [("sessions_expired",)])

    def test_a_read_only_request_only_reads_until_a_touch_is_due(self) -> None:
        clock = Clock()
        store = bs.SQLiteStore(self.path, now=clock)
        statements: list[str] = []
        app = wsgi(text_app(counter), store=store, now=clock, resave=False)
        client = Client(app)
        client.request()
        reader = Client(wsgi(text_app(reader_app), store=store, now=clock, resave=False))
        reader.cookies = dict(client.cookies)
        with store._connection() as connection:
            connection.set_trace_callback(statements.append)
        reader.request()
        self.assertEqual([s.split()[0] for s in statements], ["SELECT", "SELECT"])   # the row, and that it is still there
        statements.clear()
        clock.advance(864_000 + 1)   # past 1% of the one-day max age: the touch is due
        reader.request()
        self.assertEqual([s.split()[0] for s in statements], ["SELECT", "UPDATE"])


def reader_app(session: Session, environ: dict[str, Any]) -> Any:
    return session.get("views")


class TestPostgresStore(unittest.TestCase):
    def setUp(self) -> None:
        self.pool = PostgresServer.pool()
        self.table = postgres_table(self)

    def query(self, sql: str, *parameters: Any) -> list[Any]:
        with self.pool.connection() as connection:
            cursor = connection.execute(sql, parameters)
            return cursor.fetchall() if cursor.description else []

    def test_the_table_is_connect_pg_simples(self) -> None:
        bs.PostgresStore(self.pool, table=self.table, create_table=True)
        columns = self.query("SELECT column_name, data_type, is_nullable, datetime_precision FROM "
                             "information_schema.columns WHERE table_name = %s ORDER BY ordinal_position", self.table)
        self.assertEqual(columns, [("sid", "character varying", "NO", None), ("sess", "json", "NO", None),
                                   ("expire", "timestamp without time zone", "NO", 6)])
        self.assertEqual(sorted(row[0] for row in self.query("SELECT indexname FROM pg_indexes WHERE tablename = %s",
                                                              self.table)),
                         [f"IDX_{self.table}_expire", f"{self.table}_pkey"])
        clock = Clock()
        store = bs.PostgresStore(self.pool, table=self.table, now=clock)
        store.set("s", session_document(int(clock() * 1000) + 3_600_500, views=3))
        [(expire_s, sess)] = self.query(f'SELECT extract(epoch FROM expire::timestamptz), sess::text FROM "{self.table}"')
        self.assertEqual(int(expire_s), -(-(int(clock() * 1000) + 3_600_500) // 1000))   # seconds, rounded up
        self.assertEqual(json.loads(sess)["views"], 3)

    def test_create_table_beside_connect_pg_simples_own_and_leaves_an_existing_one_alone(self) -> None:
        other = postgres_table(self)
        bs.PostgresStore(self.pool, table=self.table, create_table=True)
        bs.PostgresStore(self.pool, table=other, create_table=True)       # no index name clashes
        self.query(f'ALTER TABLE "{self.table}" ADD COLUMN created timestamp DEFAULT now(), ADD COLUMN note text')
        store = bs.PostgresStore(self.pool, table=self.table, create_table=True)   # left as it is
        store.set("a", session_document(int(time.time() * 1000) + 60_000, v=1))
        self.query(f"""UPDATE "{self.table}" SET note = 'from node' WHERE sid = 'a' RETURNING sid""")
        store.set("a", session_document(int(time.time() * 1000) + 60_000, v=2))
        store.update("a", {"w": 1}, [], session_document(int(time.time() * 1000) + 60_000)["cookie"])
        [(created, note)] = self.query(f'SELECT created, note FROM "{self.table}"')
        self.assertEqual((created is not None, note), (True, "from node"))

    def test_setup_errors_name_the_option_and_say_what_to_do(self) -> None:
        with self.assertRaisesRegex(RuntimeError, rf"the table '{self.table}' does not exist. Create it once "
                                                  rf'\(CREATE TABLE IF NOT EXISTS "{self.table}".*create_table=True'):
            bs.PostgresStore(self.pool, table=self.table)
        psycopg = optional("psycopg")
        with psycopg.connect(PostgresServer.dsn) as connection, \
                self.assertRaisesRegex(TypeError, "needs a connection pool, not a connection"):
            bs.PostgresStore(connection, table=self.table)
        with self.assertRaisesRegex(TypeError, r"was given a sync pool: use PostgresStore\(pool\)"):
            bs.AsyncPostgresStore(self.pool, table=self.table)
        async_pool = optional("psycopg_pool").AsyncConnectionPool(PostgresServer.dsn, open=False)
        with self.assertRaisesRegex(TypeError, r"was given an async pool: use AsyncPostgresStore\(pool\)"):
            bs.PostgresStore(async_pool, table=self.table)
        with self.assertRaisesRegex(ValueError, "PostgresStore table must be a plain SQL name"):
            bs.PostgresStore(self.pool, table='session"; DROP TABLE x; --')
        with self.assertRaisesRegex(TypeError, "QuartSessionInterface: under WSGI use PostgresStore"):
            SessionMiddleware(text_app(counter), secret=LONG_SECRET, store=bs.AsyncPostgresStore(async_pool))

    def test_an_unreachable_database_fails_the_request_and_writes_nothing(self) -> None:
        psycopg = optional("psycopg")
        store = bs.PostgresStore(FlakyPool(self.pool), table=self.table, create_table=True)
        client = Client(wsgi(text_app(counter), store=store, secret=LONG_SECRET))
        client.request()
        store.pool.down = True
        with self.assertRaises(psycopg.OperationalError):
            client.request()
        store.pool.down = False
        self.assertEqual([row[0] for row in self.query(f"SELECT sess::json ->> 'views' FROM \"{self.table}\"")], ["1"])

    def test_expiry_agrees_whatever_the_time_zone_both_sides_use(self) -> None:
        psycopg_pool = optional("psycopg_pool")
        bs.PostgresStore(self.pool, table=self.table, create_table=True)
        for zone in ("Pacific/Kiritimati", "America/Adak"):   # UTC+14, UTC-10
            with self.subTest(zone=zone), psycopg_pool.ConnectionPool(
                    PostgresServer.dsn, kwargs={"options": f"-c TimeZone={zone}"}, min_size=1, max_size=1,
                    open=True) as pool:
                clock = Clock()
                store = bs.PostgresStore(pool, table=self.table, now=clock)
                store.set("s", session_document(int(clock() * 1000) + 5_000))
                clock.advance(3_000)
                self.assertIsNotNone(store.get("s"))
                clock.advance(3_000)
                self.assertIsNone(store.get("s"))
                # connect-pg-simple's own test, on a connection of the same zone: expired too
                with pool.connection() as connection:
                    live = connection.execute(f'SELECT count(*) FROM "{self.table}" WHERE sid = %s AND '
                                              f"expire >= to_timestamp(%s)", ("s", -(-int(clock() * 1000) // 1000))).fetchone()
                self.assertEqual(live[0], 0)
                store.destroy("s")

    def test_a_read_only_request_only_reads_and_a_write_is_one_transaction(self) -> None:
        recording = RecordingPool(self.pool)
        clock = Clock()
        store = bs.PostgresStore(recording, table=self.table, create_table=True, now=clock)
        client = Client(wsgi(text_app(counter), store=store, now=clock, resave=False, secret=LONG_SECRET))
        client.request()
        recording.log.clear()
        reader = Client(wsgi(text_app(reader_app), store=store, now=clock, resave=False, secret=LONG_SECRET))
        reader.cookies = dict(client.cookies)
        reader.request()
        self.assertEqual(recording.log, [["SELECT"], ["SELECT"]])   # W2: two reads, a round trip each
        recording.log.clear()
        client.request()
        self.assertEqual(recording.log, [["SELECT"], ["BEGIN", "SELECT", "UPDATE", "COMMIT"]])   # W3
        recording.log.clear()
        clock.advance(864_000 + 1000)
        reader.request()
        self.assertEqual(recording.log, [["SELECT"], ["UPDATE"]])   # a touch, once due


class FlakyPool:
    """A real pool whose connections fail while `down` (a database that went away)."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.down = pool, False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        if self.down:
            import psycopg
            raise psycopg.OperationalError("connection refused (the test took the database away)")
        with self.pool.connection() as connection:
            yield connection


class RecordingPool:
    """A real pool that records, per connection (one transaction), each statement's verb."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.log: list[list[str]] = []

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        with self.pool.connection() as connection:
            verbs: list[str] = []
            self.log.append(verbs)
            yield RecordingConnection(connection, verbs)


class RecordingConnection:
    """A psycopg connection that records what goes to the server: each statement's verb, and
    the BEGIN and COMMIT of a transaction (explicit, or the implicit one outside autocommit)."""

    def __init__(self, connection: Any, verbs: list[str]) -> None:
        self.connection, self.verbs = connection, verbs
        self.explicit = False

    @property
    def autocommit(self) -> bool:
        return bool(self.connection.autocommit)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self.connection.autocommit = value

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.verbs.append("BEGIN")
        self.explicit = True
        with self.connection.transaction():
            yield
        self.explicit = False
        self.verbs.append("COMMIT")

    def execute(self, sql: str, parameters: Any = ()) -> Any:
        if not self.connection.autocommit and not self.explicit and "BEGIN (implicit)" not in self.verbs:
            self.verbs.append("BEGIN (implicit)")
        self.verbs.append(sql.split()[0])
        return self.connection.execute(sql, parameters)


class TestConcurrencySQLiteStore(ProcessesContract, ConcurrencyContract, unittest.TestCase):
    def make_store(self) -> Any:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        self.path = os.path.join(folder, "sessions.sqlite3")
        return bs.SQLiteStore(self.path)

    def second_store(self) -> Any:
        return bs.SQLiteStore(self.path)

    def store_spec(self) -> tuple[Any, ...]:
        return ("sqlite", self.path)


class TestConcurrencyPostgresStore(ProcessesContract, ConcurrencyContract, unittest.TestCase):
    def make_store(self) -> Any:
        self.table = postgres_table(self)
        return bs.PostgresStore(PostgresServer.pool(), table=self.table, create_table=True)

    def second_store(self) -> Any:
        return bs.PostgresStore(PostgresServer.pool(), table=self.table)

    def store_spec(self) -> tuple[Any, ...]:
        return ("postgres", PostgresServer.dsn, self.table)


class TestOneLoopSQLiteStore(AsyncConcurrencyContract, AsyncTestCase):
    def setUp(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        self.store = bs.SQLiteStore(os.path.join(folder, "sessions.sqlite3"))


class TestOneLoopPostgresStore(AsyncConcurrencyContract, AsyncTestCase):
    """The sync PostgresStore, its calls on worker threads."""

    def setUp(self) -> None:
        self.store = bs.PostgresStore(PostgresServer.pool(), table=postgres_table(self), create_table=True)


class TestOneLoopAsyncPostgresStore(AsyncConcurrencyContract, AsyncTestCase):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        PostgresServer.pool()
        pool = optional("psycopg_pool").AsyncConnectionPool(PostgresServer.dsn, min_size=1, max_size=8, open=False)
        await pool.open()
        self.addAsyncCleanup(pool.close)
        self.store = bs.AsyncPostgresStore(pool, table=postgres_table(self), create_table=True)


# ---------------------------------------------------------------------------
# §13 A user's sessions: sessions_of, destroy_sessions_of, destroy_other_sessions()
# ---------------------------------------------------------------------------

def login_as(user: Any) -> Callable[[Session, dict[str, Any]], str]:
    def handler(session: Session, environ: dict[str, Any]) -> str:
        session.regenerate()
        session["_user_id"] = user
        session["device"] = environ.get("PATH_INFO") or environ.get("path")
        return session.id
    return handler


def whoami(session: Session, environ: dict[str, Any]) -> str:
    return json.dumps([session.get("_user_id"), session.get("device")])


class UserSessionsContract:
    """Section 13 on a store (subclasses say which: make_user_store), through the WSGI wrapper
    (the ASGI wrapper for async stores) and the store's own calls."""

    asynchronous = False   # an async store: its twins, on a loop of its own
    through_asgi = False   # a sync store's requests through ASGISessionMiddleware

    def make_user_store(self, clock: Clock, user_key: str | None = "_user_id") -> Any:
        raise NotImplementedError

    def plant_others(self, count: int) -> None:
        """Store `count` sessions of other users (directly, as fast as the store allows)."""
        for n in range(count):
            self.call("set", f"other{n:06d}", session_document(self.now_ms() + 600_000, _user_id=f"user{n}"))

    def count_reads(self) -> Any:
        """A context manager counting the sessions the store reads (where the test can see it)."""
        return contextlib.nullcontext([])

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.clock = Clock(time.time())
        self.store = self.make_user_store(self.clock)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def call(self, method: str, *arguments: Any) -> Any:
        if self.asynchronous:
            twin = getattr(self.store, "a" + method, None) or getattr(self.store, method)
            return self.loop.run(twin(*arguments))  # type: ignore[attr-defined]
        return getattr(self.store, method)(*arguments)

    def request(self, handler: Callable[..., Any], cookie: str | None = None, path: str = "/") -> Response:
        options = {"secret": SECRET, "store": self.store, "now": self.clock, "resave": False}
        if self.asynchronous:
            client = ASGIClient(asgi(asgi_text_app(handler), **options))
            return self.loop.run(client.arequest(path, cookie=cookie))  # type: ignore[attr-defined,no-any-return]
        if self.through_asgi:
            return ASGIClient(asgi(asgi_text_app(handler), **options)).request(path, cookie=cookie)
        return Client(wsgi(text_app(handler), **options)).request(path, cookie=cookie)

    def device(self, user: Any, name: str) -> tuple[str, str]:
        """A device logged in as `user`: (its cookie header, its session ID)."""
        response = self.request(login_as(user), path="/" + name)
        pair = (response.session_cookie() or "").split(";", 1)[0]
        return pair, sid_of(pair)

    def test_three_devices_listed_others_destroyed_then_all(self) -> None:
        laptop, phone, shared = (self.device("alice", name) for name in ("laptop", "phone", "shared"))
        bob = self.device("bob", "bobs")
        listed = self.call("sessions_of", "alice")
        self.assertEqual(set(listed), {laptop[1], phone[1], shared[1]})  # type: ignore[attr-defined]
        self.assertEqual({document["device"] for document in listed.values()}, {"/laptop", "/phone", "/shared"})  # type: ignore[attr-defined]
        self.assertTrue(all(isinstance(document["cookie"], dict) for document in listed.values()))  # type: ignore[attr-defined]
        self.assertEqual(list(self.call("sessions_of", "bob")), [bob[1]])  # type: ignore[attr-defined]
        self.assertEqual(self.call("sessions_of", "nobody"), {})  # type: ignore[attr-defined]
        # "Log out my other devices", from the laptop.
        ended = self.request(lambda s, e: (s.adestroy_other_sessions() if self.asynchronous or self.through_asgi
                                           else s.destroy_other_sessions()), laptop[0])
        self.assertEqual(ended.body, b"2")  # type: ignore[attr-defined]
        self.assertEqual(list(self.call("sessions_of", "alice")), [laptop[1]])  # type: ignore[attr-defined]
        self.assertEqual(self.request(whoami, phone[0]).body, b"[null, null]", "the phone's cookie: a new session")  # type: ignore[attr-defined]
        self.assertEqual(json.loads(self.request(whoami, laptop[0]).body), ["alice", "/laptop"])  # type: ignore[attr-defined]
        self.assertEqual(list(self.call("sessions_of", "bob")), [bob[1]])  # type: ignore[attr-defined]
        # After a password change: all of them.
        self.assertEqual(self.call("destroy_sessions_of", "alice"), 1)  # type: ignore[attr-defined]
        self.assertEqual((self.call("sessions_of", "alice"), self.call("destroy_sessions_of", "alice")), ({}, 0))  # type: ignore[attr-defined]
        self.assertEqual(self.request(whoami, laptop[0]).body, b"[null, null]")  # type: ignore[attr-defined]
        self.assertEqual(self.call("destroy_sessions_of", "unknown user"), 0)  # type: ignore[attr-defined]

    def test_keep_spares_one_session(self) -> None:
        first, second = self.device(7, "a"), self.device(7, "b")
        self.assertEqual(self.call("destroy_sessions_of", 7, first[1]), 1)  # type: ignore[attr-defined]
        self.assertEqual(list(self.call("sessions_of", 7)), [first[1]])  # type: ignore[attr-defined]
        self.assertEqual(self.call("sessions_of", "7"), {}, "values compare as their JSON: 7 is not '7'")  # type: ignore[attr-defined]
        self.assertIsNone(self.call("get", second[1]))  # type: ignore[attr-defined]

    def test_a_request_held_across_the_logout_does_not_bring_its_session_back(self) -> None:
        device = self.device("alice", "held")
        if self.asynchronous:
            self.skipTest("(the held request runs on the loop: the one-loop contract covers it)")
        app = wsgi(text_app(counter), store=self.store, now=self.clock, resave=False, rolling=True)
        held = PausedRequest(app, device[0], set_key("cart", ["book"]))
        self.assertEqual(self.call("destroy_sessions_of", "alice"), 1)  # type: ignore[attr-defined]
        response = held.finish()
        self.assertIsNone(response.session_cookie(), "the ended session's cookie is not sent again")  # type: ignore[attr-defined]
        self.assertIsNone(self.call("get", device[1]))  # type: ignore[attr-defined]
        self.assertEqual(self.call("sessions_of", "alice"), {})  # type: ignore[attr-defined]

    def test_a_session_that_changes_user_or_logs_out_moves_or_leaves(self) -> None:
        cookie, sid = self.device("alice", "moving")
        self.request(lambda s, e: s.update(_user_id="carol"), cookie)
        self.assertEqual((self.call("sessions_of", "alice"), list(self.call("sessions_of", "carol"))), ({}, [sid]))  # type: ignore[attr-defined]
        self.request(lambda s, e: s.pop("_user_id"), cookie)
        self.assertEqual(self.call("sessions_of", "carol"), {})  # type: ignore[attr-defined]
        self.assertIsNotNone(self.call("get", sid), "the session itself stays")  # type: ignore[attr-defined]
        self.request(lambda s, e: s.destroy(), cookie)
        self.assertIsNone(self.call("get", sid))  # type: ignore[attr-defined]

    def test_expired_sessions_are_not_listed(self) -> None:
        cookie, _ = self.device("alice", "short")
        self.request(lambda s, e: setattr(s.cookie, "max_age", 3_000) or s.update(short=True), cookie)
        long_lived = self.device("alice", "long")
        self.clock.advance(5_000)
        self.assertEqual(list(self.call("sessions_of", "alice")), [long_lived[1]])  # type: ignore[attr-defined]
        self.assertEqual(self.call("destroy_sessions_of", "alice"), 1)  # type: ignore[attr-defined]

    def test_without_user_key_the_error_names_it(self) -> None:
        store = self.make_user_store(self.clock, user_key=None)
        for method, arguments in (("sessions_of", ("alice",)), ("destroy_sessions_of", ("alice",))):
            twin = getattr(store, "a" + method, None) if self.asynchronous else None
            with self.assertRaisesRegex(TypeError, "keeps no index of users' sessions: build it with "  # type: ignore[attr-defined]
                                                   "user_key='_user_id'"):
                if twin is not None:
                    self.loop.run(twin(*arguments))  # type: ignore[attr-defined]
                else:
                    getattr(store, method)(*arguments)
        self.store = store
        cookie, _ = self.device("alice", "x")
        with self.assertRaisesRegex(TypeError, "user_key='_user_id'"):  # type: ignore[attr-defined]
            self.request(lambda s, e: s.adestroy_other_sessions() if self.asynchronous or self.through_asgi
                         else s.destroy_other_sessions(), cookie)

    def test_with_20000_other_sessions_it_reads_only_theirs(self) -> None:
        mine = {self.device("alice", f"d{n}")[1] for n in range(3)}
        self.plant_others(20_000)
        with self.count_reads() as reads:
            self.assertEqual(set(self.call("sessions_of", "alice")), mine)  # type: ignore[attr-defined]
        self.assertLessEqual(len(reads), 3, "sessions_of costs that user's sessions, not a scan")  # type: ignore[attr-defined]
        self.assertEqual(list(self.call("sessions_of", "user12345")), ["other012345"])  # type: ignore[attr-defined]


class TestUserSessionsMemoryStore(UserSessionsContract, unittest.TestCase):
    def make_user_store(self, clock: Clock, user_key: str | None = "_user_id") -> Any:
        return MemoryStore(now=clock, user_key=user_key)

    def plant_others(self, count: int) -> None:
        document = session_document(self.now_ms() + 600_000)
        for n in range(count):
            self.store.set(f"other{n:06d}", {**document, "_user_id": f"user{n}"})

    @contextlib.contextmanager
    def count_reads(self) -> Iterator[list[str]]:
        reads: list[str] = []
        decode = MemoryStore._decode
        MemoryStore._decode = staticmethod(lambda entry: reads.append("read") or decode(entry))  # type: ignore[assignment,method-assign]
        try:
            yield reads
        finally:
            MemoryStore._decode = staticmethod(decode)  # type: ignore[method-assign]


class TestUserSessionsMemoryStoreASGI(TestUserSessionsMemoryStore):
    through_asgi = True


class TestUserSessionsFileStore(UserSessionsContract, unittest.TestCase):
    def make_user_store(self, clock: Clock, user_key: str | None = "_user_id") -> Any:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)
        return FileStore(self.folder, now=clock, user_key=user_key)

    def plant_others(self, count: int) -> None:   # (files written directly: 20,000 saves would take long)
        text = bs._dumps(session_document(self.now_ms() + 600_000))[:-1]
        for n in range(count):
            with open(os.path.join(self.folder, f"other{n:06d}.json"), "w", encoding="utf-8") as file:
                file.write(f'{text},"_user_id":"user{n}","__lastAccess":{self.now_ms()}}}')
            if n == 12345:
                self.store._mark(f"other{n:06d}", '"user12345"')

    @contextlib.contextmanager
    def count_reads(self) -> Iterator[list[str]]:
        reads: list[str] = []
        read = bs._read_regular_file
        bs._read_regular_file = lambda path: reads.append(path) or read(path)  # type: ignore[assignment]
        try:
            yield reads
        finally:
            bs._read_regular_file = read

    def test_the_index_is_invisible_to_session_file_store(self) -> None:
        self.device("alice", "laptop")
        self.assertEqual([name for name in os.listdir(self.folder) if name.endswith(".json")],
                         [name for name in os.listdir(self.folder) if not name.startswith(".")])
        self.assertTrue(os.path.isdir(os.path.join(self.folder, ".users")))
        # reap() takes away markers of sessions that are gone; clear() all of them.
        _, sid = self.device("alice", "gone")
        os.unlink(os.path.join(self.folder, sid + ".json"))
        self.store.reap()
        self.assertEqual(len(os.listdir(os.path.join(self.folder, ".users", os.listdir(
            os.path.join(self.folder, ".users"))[0]))), 1)
        self.store.clear()
        self.assertEqual(os.listdir(self.folder), [])


class TestUserSessionsSQLiteStore(UserSessionsContract, unittest.TestCase):
    def make_user_store(self, clock: Clock, user_key: str | None = "_user_id") -> Any:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        self.path = os.path.join(folder, "sessions.sqlite3")
        return bs.SQLiteStore(self.path, now=clock, user_key=user_key)

    def plant_others(self, count: int) -> None:
        import sqlite3
        text = bs._dumps(session_document(self.now_ms() + 600_000))[:-1]
        with contextlib.closing(sqlite3.connect(self.path)) as connection, connection:
            connection.executemany("INSERT INTO sessions (sid, expired, sess) VALUES (?, ?, ?)",
                                   ((f"other{n:06d}", self.now_ms() + 600_000, f'{text},"_user_id":"user{n}"}}')
                                    for n in range(count)))

    def test_the_lookup_uses_its_index_and_finds_what_node_wrote(self) -> None:
        import sqlite3
        with contextlib.closing(sqlite3.connect(self.path)) as connection:
            plan = connection.execute("EXPLAIN QUERY PLAN " + self.store._sql["_SESSIONS_OF"], ('"x"', 0)).fetchall()
        self.assertIn('USING INDEX sessions_user__user_id', " ".join(str(row) for row in plan))
        with contextlib.closing(sqlite3.connect(self.path)) as connection, connection:   # as connect-sqlite3 writes
            connection.execute("INSERT INTO sessions VALUES (?, ?, ?)", ("fromnode", self.now_ms() + 60_000, json.dumps(
                {"cookie": {"originalMaxAge": 60000, "expires": None, "httpOnly": True, "path": "/"}, "_user_id": "alice"})))
        self.assertEqual(list(self.store.sessions_of("alice")), ["fromnode"])


class TestUserSessionsSQLiteStoreASGI(TestUserSessionsSQLiteStore):
    through_asgi = True   # (its calls on worker threads)


class TestUserSessionsPostgresStore(UserSessionsContract, unittest.TestCase):
    def make_user_store(self, clock: Clock, user_key: str | None = "_user_id") -> Any:
        if not hasattr(self, "table"):
            self.table = postgres_table(self)
        return bs.PostgresStore(PostgresServer.pool(), table=self.table, create_table=True, now=clock,
                                user_key=user_key)

    def plant_others(self, count: int) -> None:
        text = bs._dumps(session_document(self.now_ms() + 600_000))[:-1]
        with PostgresServer.pool().connection() as connection:
            connection.execute(f'INSERT INTO "{self.table}" (sid, sess, expire) SELECT '
                               f"'other' || lpad(n::text, 6, '0'), (%s || ',\"_user_id\":\"user' || n || '\"}}')::json, "
                               f"to_timestamp(%s) FROM generate_series(0, %s - 1) AS n",
                               (text, self.now_ms() // 1000 + 600, count))
            connection.execute(f'ANALYZE "{self.table}"')

    def test_the_lookup_uses_its_index_and_finds_what_node_wrote(self) -> None:
        self.plant_others(2_000)
        with PostgresServer.pool().connection() as connection:
            plan = connection.execute("EXPLAIN " + self.store._sql["_SESSIONS_OF"], ('"user5"', 0)).fetchall()
            connection.execute(f'INSERT INTO "{self.table}" (sid, sess, expire) VALUES (%s, %s::json, to_timestamp(%s))',
                               ("fromnode", json.dumps({"cookie": {"originalMaxAge": 60000, "expires": None},
                                                         "_user_id": "alice"}), self.now_ms() // 1000 + 60))
        self.assertIn(f"IDX_{self.table}__user_id", " ".join(row[0] for row in plan))
        self.assertEqual(list(self.store.sessions_of("alice")), ["fromnode"])


class TestUserSessionsRedisStore(UserSessionsContract, RedisTestCase):
    def make_user_store(self, clock: Clock, user_key: str | None = "_user_id") -> Any:
        return RedisStore(self.redis, prefix=self.prefix, now=clock, user_key=user_key)

    def test_expired_sessions_are_not_listed(self) -> None:
        self.skipTest("Redis expires keys by its own clock, not the test's (TestRedisStore covers TTLs)")

    def plant_others(self, count: int) -> None:
        text = bs._dumps(session_document(self.now_ms() + 600_000))[:-1]
        with self.redis.pipeline(transaction=False) as pipe:
            for n in range(count):
                pipe.set(f"{self.prefix}other{n:06d}", f'{text},"_user_id":"user{n}"}}', ex=600)
            pipe.sadd(f'bunway-users:{self.prefix}"user12345"', "other012345")
            pipe.execute()

    @contextlib.contextmanager
    def count_reads(self) -> Iterator[list[str]]:
        reads: list[str] = []
        mget = self.store.client.mget
        self.store.client.mget = lambda keys: reads.extend(keys) or mget(keys)
        try:
            yield reads
        finally:
            self.store.client.mget = mget

    def test_the_index_is_outside_connect_redis_prefix_and_follows_its_longest_session(self) -> None:
        self.device("alice", "laptop")
        keys = [key.decode() for key in self.redis.scan_iter(match="*" + self.prefix + "*")]
        index = f'bunway-users:{self.prefix}"alice"'
        self.assertIn(index, keys)
        self.assertTrue(all(key.startswith(self.prefix) for key in keys if key != index))
        self.assertEqual(len(self.store.all()), 1, "all() and length() see sessions only")
        self.assertEqual(self.store.length(), 1)
        self.assertTrue(86_000_000 < self.redis.pttl(index) <= 86_400_000 + 1000)
        with self.assertRaisesRegex(ValueError, "would cover its index"):
            RedisStore(self.redis, prefix="b", user_key="_user_id")


class TestUserSessionsAsyncRedisStore(UserSessionsContract, unittest.TestCase):
    asynchronous = True

    def make_user_store(self, clock: Clock, user_key: str | None = "_user_id") -> Any:
        if not hasattr(self, "loop"):
            RedisServer.client().close()
            redis_asyncio = optional("redis.asyncio")
            self.loop = LoopThread()
            self.addCleanup(self.loop.close)
            self.prefix = f"test:{self.id().rsplit('.', 1)[-1]}:"

            async def make() -> Any:
                return redis_asyncio.Redis.from_url(RedisServer.url)
            self.client = self.loop.run(make())
            self.addCleanup(lambda: self.loop.run(self.cleanup()))
        return bs.AsyncRedisStore(self.client, prefix=self.prefix, now=clock, user_key=user_key)

    async def cleanup(self) -> None:
        keys = [key async for key in self.client.scan_iter(match="*" + self.prefix + "*")]
        if keys:
            await self.client.delete(*keys)
        await self.client.aclose() if hasattr(self.client, "aclose") else await self.client.close()

    def test_expired_sessions_are_not_listed(self) -> None:
        self.skipTest("Redis expires keys by its own clock, not the test's (TestRedisStore covers TTLs)")

    def test_with_20000_other_sessions_it_reads_only_theirs(self) -> None:
        self.skipTest("(RedisStore runs it: the same index)")


class TestUserSessionsAsyncPostgresStore(UserSessionsContract, unittest.TestCase):
    asynchronous = True

    def make_user_store(self, clock: Clock, user_key: str | None = "_user_id") -> Any:
        if not hasattr(self, "loop"):
            PostgresServer.pool()
            psycopg_pool = optional("psycopg_pool")
            self.loop = LoopThread()
            self.addCleanup(self.loop.close)
            self.table = postgres_table(self)

            async def open_pool() -> Any:
                pool = psycopg_pool.AsyncConnectionPool(PostgresServer.dsn, min_size=1, max_size=4, open=False)
                await pool.open()
                return pool
            self.pool = self.loop.run(open_pool())
            self.addCleanup(lambda: self.loop.run(self.pool.close()))
        return bs.AsyncPostgresStore(self.pool, table=self.table, create_table=True, now=clock, user_key=user_key)

    def test_with_20000_other_sessions_it_reads_only_theirs(self) -> None:
        self.skipTest("(PostgresStore runs it: the same statement and index)")


# ---------------------------------------------------------------------------
# The README: every Python snippet runs as pasted
# ---------------------------------------------------------------------------

README_PACKAGES = ("flask", "flask_login", "quart", "django", "fastapi", "starlette", "litestar")


class TestReadme(unittest.TestCase):
    def test_every_python_snippet_runs_as_pasted(self) -> None:
        root = os.path.dirname(os.path.abspath(bs.__file__))
        with open(os.path.join(root, "README.md"), encoding="utf-8") as file:
            snippets = re.findall(r"^```python\n(.*?)^```", file.read(), re.MULTILINE | re.DOTALL)
        self.assertGreaterEqual(len(snippets), 8)
        skipped: list[str] = []
        for number, snippet in enumerate(snippets, 1):
            with self.subTest(snippet=number, first_line=snippet.splitlines()[0]), \
                    tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "snippet.py")
                with open(path, "w", encoding="utf-8") as file:
                    file.write(snippet)
                # As imported (a server's `if __name__ == "__main__"` block does not run), in an
                # empty folder of its own, with the secret from the environment.
                done = subprocess.run(
                    [sys.executable, "-c", f"import runpy; runpy.run_path({path!r}, run_name='snippet')"],
                    cwd=folder, capture_output=True, text=True, timeout=120, check=False,
                    env={**os.environ, "PYTHONPATH": root, "SESSION_SECRET": LONG_SECRET})
                missing = re.search(r"ModuleNotFoundError: No module named '(\w+)", done.stderr)
                if missing and missing.group(1) in README_PACKAGES:
                    if REQUIRE_ALL:
                        self.fail(f"BUNWAY_REQUIRE_ALL=1, but {missing.group(1)} is not installed")
                    skipped.append(missing.group(1))
                    continue
                self.assertEqual(done.returncode, 0, done.stderr[-2000:])
                self.assertEqual(done.stderr, "", "a snippet must run without errors or warnings")
        if skipped:
            self.skipTest(f"the snippets that need {', '.join(sorted(set(skipped)))} (not installed) did not run")
