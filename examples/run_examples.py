"""make examples: run each example app under a real uvicorn, as a user would start it, and walk
it: anonymous (no cookie), a visit, login (a new session ID; the old one is dead), the
protected page, logout (the cookie expires; the logged-in ID is dead).

Prints one PASS/FAIL/SKIP line per example and a last line "N passed, N failed, N skipped".
An example whose framework is not installed is skipped, or fails under BUNWAY_REQUIRE_ALL=1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import traceback
import urllib.error
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRE_ALL = os.environ.get("BUNWAY_REQUIRE_ALL") == "1"
EXAMPLES = [  # (module, ASGI application, the framework it needs)
    ("starlette_app", "app", "starlette"),
    ("fastapi_app", "app", "fastapi"),
    ("quart_app", "app", "quart"),
    ("litestar_app", "app", "litestar"),
    ("django_app", "application", "django"),
]


class Example:
    """One example under uvicorn on a free port, and a client that passes cookies by hand."""

    def __init__(self, module: str, application: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", f"examples.{module}:{application}", "--host", "127.0.0.1",
             "--port", "0", "--log-level", "info"], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "SESSION_SECRET": "examples secret"})
        self.output: list[str] = []
        found = threading.Event()
        self.port = 0

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.output.append(line)
                match = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
                if match:
                    self.port = int(match.group(1))
                    found.set()
            found.set()
        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60) or not self.port:
            self.stop()
            raise RuntimeError("uvicorn did not start:\n" + "".join(self.output[-30:]))

    def call(self, method: str, path: str, cookie: str | None = None) -> tuple[int, Any, str | None]:
        """(status, JSON body, the session cookie's Set-Cookie header or None)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                         data=b"" if method == "POST" else None)
        if cookie:
            request.add_header("Cookie", cookie)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, body, headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, body, headers = error.code, error.read(), error.headers
            error.close()
        set_cookies = [c for c in headers.get_all("Set-Cookie") or [] if c.startswith("connect.sid=")]
        return status, json.loads(body), (set_cookies[0] if set_cookies else None)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def pair(set_cookie: str | None) -> str:
    assert set_cookie, "expected a Set-Cookie"
    return set_cookie.split(";", 1)[0]


def walk(example: Example) -> None:
    status, _, set_cookie = example.call("GET", "/private")
    assert (status, set_cookie) == (401, None), ("anonymous", status, set_cookie)
    status, body, set_cookie = example.call("GET", "/")
    assert status == 200 and body["views"] == 1 and body["user"] is None, ("first visit", status, body)
    visitor = pair(set_cookie)
    status, body, set_cookie = example.call("GET", "/", visitor)
    # The same session; changed, so its cookie is sent again with a new expiry (express-session).
    assert body["views"] == 2 and pair(set_cookie) == visitor, ("second visit", body, set_cookie)
    status, body, set_cookie = example.call("POST", "/login?user=alice", visitor)
    member = pair(set_cookie)
    assert status == 200 and body["user"] == "alice" and member != visitor, ("login", status, body, set_cookie)
    status, body, _ = example.call("GET", "/private", member)
    assert (status, body["user"]) == (200, "alice"), ("protected page", status, body)
    status, _, _ = example.call("GET", "/private", visitor)
    assert status == 401, ("the pre-login ID must be dead after login", status)
    status, body, _ = example.call("GET", "/", member)
    assert body == {"user": "alice", "views": 1}, ("regenerate starts from no data", body)
    status, _, set_cookie = example.call("POST", "/logout", member)
    assert status == 200 and set_cookie and "Expires=Thu, 01 Jan 1970 00:00:00 GMT" in set_cookie, \
        ("logout expires the cookie", status, set_cookie)
    status, _, _ = example.call("GET", "/private", member)
    assert status == 401, ("the logged-in ID must be dead after logout", status)


def main() -> int:
    passed = failed = skipped = 0
    for module, application, framework in EXAMPLES:
        try:
            __import__(framework)
            __import__("uvicorn")
        except ImportError as error:
            if REQUIRE_ALL:
                print(f"FAIL {module}: {error.name} is not installed, and BUNWAY_REQUIRE_ALL=1")
                failed += 1
            else:
                print(f"SKIP {module}: {error.name} is not installed")
                skipped += 1
            continue
        example = None
        try:
            example = Example(module, application)
            walk(example)
        except Exception:  # noqa: BLE001 - reported as a failed example
            failed += 1
            print(f"FAIL {module}\n" + "".join("     " + line for line in traceback.format_exc().splitlines(True)[-8:]))
            if example is not None:
                print("".join("     " + line for line in example.output[-15:]))
        else:
            passed += 1
            print(f"PASS {module}: login regenerates, protected page, logout, under uvicorn")
        finally:
            if example is not None:
                example.stop()
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
