"""make examples: run each example app under a real server (uvicorn; wsgiref for Flask), as a
user would start it, and walk it: anonymous (no cookie), a visit, login (a new session ID; the
old one is dead), the protected page, logout (the cookie expires; the logged-in ID is dead).
The Django project is walked through its admin login (a superuser, CSRF) and messages.

Prints one PASS/FAIL/SKIP line per example and a last line "N passed, N failed, N skipped".
An example whose framework is not installed is skipped, or fails under BUNWAY_REQUIRE_ALL=1.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRE_ALL = os.environ.get("BUNWAY_REQUIRE_ALL") == "1"
SECRET = "examples secret, at least thirty-two bytes long"


def uvicorn(target: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", "0", "--log-level", "info"]


class Example:
    """One example on a free port (its command prints the URL it serves), and a client that
    passes cookies by hand."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, **env, "SESSION_SECRET": SECRET})
        self.output: list[str] = []
        found = threading.Event()
        self.port = 0

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.output.append(line)
                match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line, re.IGNORECASE)
                if match:
                    self.port = int(match.group(1))
                    found.set()
            found.set()
        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60) or not self.port:
            self.stop()
            raise RuntimeError("the example did not start:\n" + "".join(self.output[-30:]))

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


def walk(example: Example, keeps_data: bool) -> None:
    """The walk of the apps with a JSON login: POST /login?user=alice. `keeps_data`: the
    framework interfaces keep the session's data under the new ID (regenerate() does not)."""
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
    views = 3 if keeps_data else 1
    assert body == {"user": "alice", "views": views}, ("the data after login", body)
    status, _, set_cookie = example.call("POST", "/logout", member)
    assert status == 200 and set_cookie and "Expires=Thu, 01 Jan 1970 00:00:00 GMT" in set_cookie, \
        ("logout expires the cookie", status, set_cookie)
    status, _, _ = example.call("GET", "/private", member)
    assert status == 401, ("the logged-in ID must be dead after logout", status)


def walk_django(example: Example) -> None:
    """The Django project, as a browser: a visit, the admin's login form (CSRF, a superuser),
    the protected page and a message, logout."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{example.port}"

    def fetch(path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(base + path, data=data, headers=headers or {})
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode()

    def cookie(name: str) -> str | None:
        return next((c.value for c in jar if c.name == name), None)

    assert fetch("/private")[0] == 401, "anonymous"
    assert json.loads(fetch("/")[1]) == {"user": None, "views": 1}, "first visit"
    visitor = cookie("connect.sid")
    assert visitor and visitor.startswith("s%3A"), ("express-session's cookie value", visitor)
    status, page = fetch("/admin/login/?next=/admin/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert status == 200 and token, ("the admin's login form", status)
    status, page = fetch("/admin/login/?next=/admin/", {"username": "alice", "password": "wonderland",
                                                          "next": "/admin/", "csrfmiddlewaretoken": token.group(1)})
    assert status == 200 and "Site administration" in page, ("admin login", status, page[:300])
    member = cookie("connect.sid")
    assert member and member != visitor, ("login must change the session ID", visitor, member)
    status, page = fetch("/hello")
    assert (status, json.loads(page)) == (200, {"user": "alice", "messages": ["Hello, alice"]}), ("messages", page)
    assert json.loads(fetch("/private")[1])["messages"] == [], "a message is shown once"
    assert json.loads(fetch("/")[1]) == {"user": "alice", "views": 2}, "the data survives the login"
    jar.clear()
    jar_visitor = urllib.request.Request(base + "/private", headers={"Cookie": f"connect.sid={visitor}"})
    try:
        urllib.request.urlopen(jar_visitor, timeout=30).close()
        raise AssertionError("the pre-login ID must be dead after login")
    except urllib.error.HTTPError as error:
        error.close()
        assert error.code == 401, error.code
    request = urllib.request.Request(base + "/logout", data=b"", headers={
        "Cookie": f"connect.sid={member}; csrftoken={token.group(1)}", "X-CSRFToken": token.group(1)})
    with urllib.request.urlopen(request, timeout=30) as response:
        expired = [c for c in response.headers.get_all("Set-Cookie") or [] if c.startswith("connect.sid=")]
    assert expired and "01 jan 1970" in expired[0].lower(), ("logout deletes the cookie", expired)
    request = urllib.request.Request(base + "/private", headers={"Cookie": f"connect.sid={member}"})
    try:
        urllib.request.urlopen(request, timeout=30).close()
        raise AssertionError("the logged-in ID must be dead after logout")
    except urllib.error.HTTPError as error:
        error.close()
        assert error.code == 401, error.code


def django_setup(env: dict[str, str]) -> None:
    """What a user does once: make the database and a superuser (alice / wonderland)."""
    settings = ["--settings", "examples.django_project.settings"]
    for command, extra in ((["migrate", "--noinput"], {}),
                           (["createsuperuser", "--noinput", "--username", "alice", "--email", "alice@example.com"],
                            {"DJANGO_SUPERUSER_PASSWORD": "wonderland"})):
        subprocess.run([sys.executable, "-m", "django", *command, *settings], cwd=ROOT, check=True, timeout=120,
                       capture_output=True, env={**os.environ, **env, **extra, "SESSION_SECRET": SECRET})


# (name, the command that serves it, the frameworks it needs, how it is walked)
EXAMPLES: list[tuple[str, list[str], tuple[str, ...], Any]] = [
    ("starlette_app", uvicorn("examples.starlette_app:app"), ("starlette", "uvicorn"), lambda e: walk(e, False)),
    ("fastapi_app", uvicorn("examples.fastapi_app:app"), ("fastapi", "uvicorn"), lambda e: walk(e, False)),
    ("litestar_app", uvicorn("examples.litestar_app:app"), ("litestar", "uvicorn"), lambda e: walk(e, False)),
    ("flask_app", [sys.executable, "examples/flask_app.py", "--port", "0"], ("flask", "flask_login"),
     lambda e: walk(e, True)),
    ("quart_app", uvicorn("examples.quart_app:app"), ("quart", "uvicorn"), lambda e: walk(e, True)),
    ("django_project", uvicorn("examples.django_project.asgi:application"), ("django", "uvicorn"), walk_django),
]


def main() -> int:
    passed = failed = skipped = 0
    for name, command, frameworks, walker in EXAMPLES:
        try:
            for framework in frameworks:
                __import__(framework)
        except ImportError as error:
            if REQUIRE_ALL:
                print(f"FAIL {name}: {error.name} is not installed, and BUNWAY_REQUIRE_ALL=1")
                failed += 1
            else:
                print(f"SKIP {name}: {error.name} is not installed")
                skipped += 1
            continue
        example = None
        data = tempfile.mkdtemp(prefix="bunway-example-")
        env = {"EXAMPLE_DATA_DIR": data}
        try:
            if name == "django_project":
                django_setup(env)
            example = Example(command, env)
            walker(example)
        except Exception:  # noqa: BLE001 - reported as a failed example
            failed += 1
            print(f"FAIL {name}\n" + "".join("     " + line for line in traceback.format_exc().splitlines(True)[-8:]))
            if example is not None:
                print("".join("     " + line for line in example.output[-15:]))
        else:
            passed += 1
            print(f"PASS {name}: login changes the ID, protected page, logout, under a real server")
        finally:
            if example is not None:
                example.stop()
            shutil.rmtree(data, ignore_errors=True)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
