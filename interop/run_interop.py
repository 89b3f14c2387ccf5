"""make interop: run express-session (node_app.js) and bunway_session (python_app.py) side by
side on one secret and one store, and check that they share their users' sessions.

For each store (a temporary folder with session-file-store / FileStore, a private
redis-server on a unix socket with connect-redis / RedisStore, a SQLite file with
connect-sqlite3 / SQLiteStore, and a PostgreSQL table with connect-pg-simple / PostgresStore
and AsyncPostgresStore), it starts the apps (each
binds a free loopback port and reports it) and runs every scenario twice: with the Python
WSGI app (python_app.py, wsgiref) and with the Python ASGI app (python_asgi_app.py under
uvicorn, with AsyncRedisStore on Redis), then the frameworks' own sessions: a Flask-Login
login and a Django auth.login() (python_framework_app.py) read by Node, and a value Node
sets read by each. It stops everything it started, and prints one
PASS/FAIL/SKIP line per scenario and a last line "N passed, N failed, N skipped". Without
redis-server or redis-py the Redis scenarios are skipped, and without uvicorn the ASGI
ones; under BUNWAY_REQUIRE_ALL=1 (as CI runs it) a missing component is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import bunway_session as bs

NEW_SECRET = "the-new-interop-secret-of-more-than-32-bytes"
OLD_SECRET = "the-old-interop-secret-of-more-than-32-bytes"
SECRETS = NEW_SECRET + "," + OLD_SECRET
REQUIRE_ALL = os.environ.get("BUNWAY_REQUIRE_ALL") == "1"


class Side:
    """One running app, and a tiny client for it that passes cookies by hand."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        # The app binds port 0 and prints "listening <port>" once it accepts connections.
        self.process = subprocess.Popen(command, env={**os.environ, **env, "PORT": "0"},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(30)
        if not first or not first[0].startswith("listening "):
            self.stop()
            raise RuntimeError(f"{name} did not start: {first[0] if first else 'no output within 30 s'}")
        self.port = int(first[0].split()[1])
        self.call("GET", "/ping")

    def call(self, method: str, path: str, cookie: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[dict[str, Any], str | None]:
        """(JSON body, the session cookie's Set-Cookie header or None)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                         headers=dict(headers or {}), data=b"" if method == "POST" else None)
        if cookie:
            request.add_header("Cookie", cookie)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body, set_cookies = response.read(), response.headers.get_all("Set-Cookie") or []
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{self.name} {method} {path}: HTTP {error.code}: {error.read()[:300]!r}") from None
        session_cookies = [c for c in set_cookies if c.startswith("connect.sid=")]
        return json.loads(body), (session_cookies[0] if session_cookies else None)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()


def pair_of_cookie(set_cookie: str | None) -> str:
    assert set_cookie, "expected a Set-Cookie"
    return set_cookie.split(";", 1)[0]


def without_expires(set_cookie: str) -> str:
    return "; ".join(part for part in set_cookie.split("; ") if not part.startswith("Expires="))


# -- the scenarios: each gets (node, python, old_node, store) and raises on failure ---------

def set_cookie_identical(node: Side, python: Side, old_node: Side, store: Any) -> None:
    sid = f"interopSameId{int(time.time() * 1000)}"
    _, from_node = node.call("GET", "/count", headers={"X-Interop-Id": sid})
    # The same ID and secret: Python's Set-Cookie for the session Node started.
    _, from_python = python.call("GET", "/count", cookie=pair_of_cookie(from_node))
    assert from_node and from_python
    expected = "connect.sid=" + bs._encode_uri_component("s:" + bs.sign(sid, SECRETS.split(",")[0]))
    assert pair_of_cookie(from_node) == expected, (from_node, expected)
    # Byte for byte but for the moment it was sent (Expires), which must agree within seconds.
    assert without_expires(from_python) == without_expires(from_node), (from_python, from_node)
    moments = [time.mktime(time.strptime(part[8:], "%a, %d %b %Y %H:%M:%S GMT"))
               for header in (from_node, from_python) for part in header.split("; ") if part.startswith("Expires=")]
    assert len(moments) == 2 and abs(moments[0] - moments[1]) <= 5, (from_node, from_python)
    # A new session on each side gets the same attributes.
    _, new_python = python.call("GET", "/count")
    assert new_python is not None
    assert without_expires(new_python).split("; ")[1:] == without_expires(from_node).split("; ")[1:]


def node_then_python_and_back(node: Side, python: Side, old_node: Side, store: Any) -> None:
    body, set_cookie = node.call("GET", "/count")
    cookie, sid = pair_of_cookie(set_cookie), body["id"]
    for views, side in enumerate([python, node, python, node, python], start=2):
        body, _ = side.call("GET", "/count", cookie=cookie)
        assert (body["id"], body["views"]) == (sid, views), (side.name, body)


def python_then_node(node: Side, python: Side, old_node: Side, store: Any) -> None:
    body, set_cookie = python.call("GET", "/count")
    cookie, sid = pair_of_cookie(set_cookie), body["id"]
    for views, side in enumerate([node, python, node], start=2):
        body, _ = side.call("GET", "/count", cookie=cookie)
        assert (body["id"], body["views"]) == (sid, views), (side.name, body)


def flash_crosses_over(node: Side, python: Side, old_node: Side, store: Any) -> None:
    for writer, reader in ((node, python), (python, node)):
        _, set_cookie = writer.call("GET", "/count")
        cookie = pair_of_cookie(set_cookie)
        body, _ = writer.call("POST", "/flash?type=info&msg=" + urllib.parse.quote_plus(f"from {writer.name}"),
                              cookie=cookie)
        assert body["count"] == 1, body
        body, _ = reader.call("POST", "/flash?type=info&msg=second", cookie=cookie)
        assert body["count"] == 2, body
        body, _ = reader.call("GET", "/flash?type=info", cookie=cookie)
        assert body["messages"] == [f"from {writer.name}", "second"], body
        body, _ = writer.call("GET", "/flash?type=info", cookie=cookie)
        assert body["messages"] == [], body


def regenerate_on_one_side(node: Side, python: Side, old_node: Side, store: Any) -> None:
    for login, other in ((node, python), (python, node)):
        _, set_cookie = login.call("GET", "/count")
        old_cookie = pair_of_cookie(set_cookie)
        body, set_cookie = login.call("POST", "/login?user=alice", cookie=old_cookie)
        new_cookie, new_id = pair_of_cookie(set_cookie), body["id"]
        assert new_cookie != old_cookie
        body, _ = other.call("GET", "/whoami", cookie=new_cookie)
        assert (body["id"], body["user"]) == (new_id, "alice"), (other.name, body)
        body, _ = other.call("GET", "/whoami", cookie=old_cookie)
        assert body["user"] is None and body["views"] is None, (other.name, "old cookie still works", body)


def destroy_on_one_side(node: Side, python: Side, old_node: Side, store: Any) -> None:
    for logout, other in ((python, node), (node, python)):
        body, set_cookie = other.call("POST", "/login?user=bob")
        cookie, sid = pair_of_cookie(set_cookie), body["id"]
        body, _ = logout.call("GET", "/whoami", cookie=cookie)
        assert body["user"] == "bob", body
        logout.call("POST", "/logout", cookie=cookie)
        body, _ = other.call("GET", "/whoami", cookie=cookie)
        assert body["user"] is None and body["id"] != sid, (other.name, body)


def old_secret_still_verifies(node: Side, python: Side, old_node: Side, store: Any) -> None:
    body, set_cookie = old_node.call("GET", "/count")
    cookie, sid = pair_of_cookie(set_cookie), body["id"]
    assert cookie == "connect.sid=" + bs._encode_uri_component("s:" + bs.sign(sid, OLD_SECRET))
    body, _ = python.call("GET", "/count", cookie=cookie)
    assert (body["id"], body["views"]) == (sid, 2), body
    body, _ = node.call("GET", "/count", cookie=cookie)
    assert (body["id"], body["views"]) == (sid, 3), body


def short_max_age_expires_on_both_sides(node: Side, python: Side, old_node: Side, store: Any) -> None:
    cookies = []
    for side in (node, python):
        _, set_cookie = side.call("GET", "/count")
        body, set_cookie = side.call("POST", "/short?ms=1000", cookie=pair_of_cookie(set_cookie))
        cookies.append((pair_of_cookie(set_cookie), body["id"]))
    time.sleep(2.2)  # past the 1 s max age (Redis TTLs are whole seconds)
    for cookie, sid in cookies:
        for side in (node, python):
            body, _ = side.call("GET", "/whoami", cookie=cookie)
            assert body["views"] is None and body["id"] != sid, (side.name, "expired session still served", body)


def each_side_reads_the_others_files(node: Side, python: Side, old_node: Side, store: Any) -> None:
    if store["kind"] != "file":
        raise Skip("file store only")
    folder = store["path"]
    for side in (node, python):
        side.call("GET", "/count")
    names = [name for name in os.listdir(folder) if name.endswith(".json")]
    assert len(names) >= 2, names
    reader = bs.FileStore(folder)
    for name in names:
        with open(os.path.join(folder, name), encoding="utf-8") as file:
            document = json.load(file)
        assert isinstance(document.get("cookie"), dict) and "__lastAccess" in document, name
    live = len(reader.all())
    node_count, _ = node.call("GET", "/length")
    python_count, _ = python.call("GET", "/length")
    assert node_count["length"] == len(names), (node_count, names)   # session-file-store counts every .json
    assert python_count["length"] == live, (python_count, live)


def a_users_sessions_beside_nodes_store(node: Side, python: Side, old_node: Side, store: Any) -> None:
    """Python keeps an index of each user's sessions (user_key): Node's store does not see it
    (all() and length() count sessions only), and where the store can query the stored data
    (SQL) Python finds the sessions Node logged in too."""
    user = f"carol{int(time.time() * 1000)}"
    mine = sorted(python.call("POST", f"/login?user={user}")[0]["id"] for _ in range(2))
    assert python.call("GET", f"/devices?user={user}")[0]["sessions"] == mine, "Python lists its logins"
    nodes = node.call("POST", f"/login?user={user}")[0]["id"]
    listed = python.call("GET", f"/devices?user={user}")[0]["sessions"]
    expected = sorted([*mine, nodes]) if store["kind"] in ("sqlite", "postgres") else mine
    assert listed == expected, (store["kind"], "what Python finds", listed, expected)
    if store["kind"] == "postgres":
        return   # (connect-pg-simple has no all() or length(); the index is on sess: no row or column)
    held = entries_in(store)
    counts = (node.call("GET", "/length")[0]["length"], node.call("GET", "/all")[0]["count"])
    assert counts == (held, held), ("Node's all() and length() see the sessions, not the index", counts, held)


def entries_in(store: dict[str, Any]) -> int:
    """The sessions the store holds (expired ones included), counted as Node's store counts them."""
    if store["kind"] == "file":
        return len([name for name in os.listdir(store["path"]) if name.endswith(".json")])
    if store["kind"] == "redis":
        import redis
        client = redis.Redis(unix_socket_path=store["env_REDIS_SOCKET"])
        try:
            return len(list(client.scan_iter(match="sess:*")))
        finally:
            client.close()
    import sqlite3
    connection = sqlite3.connect(store["env_SQLITE_PATH"])
    try:
        return int(connection.execute("SELECT count(*) FROM sessions").fetchone()[0])
    finally:
        connection.close()


SCENARIOS: list[Callable[..., None]] = [
    set_cookie_identical, node_then_python_and_back, python_then_node, flash_crosses_over,
    regenerate_on_one_side, destroy_on_one_side, old_secret_still_verifies,
    short_max_age_expires_on_both_sides, each_side_reads_the_others_files, a_users_sessions_beside_nodes_store,
]


class Skip(Exception):
    pass


# -- the frameworks' own sessions: each gets (node, framework app, store) --------------------

def framework_login_seen_by_node(node: Side, framework: Side, store: Any) -> None:
    """Node starts a session; the framework's login (Flask-Login's login_user(), Django's
    auth.login()) gives it a new ID and keeps its data; Node sees who logged in."""
    body, set_cookie = node.call("GET", "/count")
    cookie = pair_of_cookie(set_cookie)
    body, set_cookie = framework.call("POST", "/login?user=alice", cookie=cookie)
    assert (body["user"], body["views"]) == ("alice", 1), body
    login_cookie = pair_of_cookie(set_cookie)
    assert login_cookie != cookie, "the login must change the session ID"
    body, _ = node.call("GET", "/whoami", cookie=login_cookie)
    who = body["flaskUser"] if framework.name.startswith("flask") else body["djangoUser"]
    assert who and body["views"] == 1, ("Node must see the login", body)
    if framework.name.startswith("flask"):
        assert who == "alice", body
    body, _ = node.call("GET", "/whoami", cookie=cookie)
    assert body["views"] is None, ("the pre-login ID must be dead for Node too", body)


def node_value_seen_by_framework(node: Side, framework: Side, store: Any) -> None:
    """A value Node sets is seen by the framework's session, before and after a login."""
    body, set_cookie = node.call("GET", "/count")
    cookie = pair_of_cookie(set_cookie)
    body, _ = framework.call("GET", "/whoami", cookie=cookie)
    assert body["views"] == 1, body
    body, set_cookie = framework.call("POST", "/login?user=bob", cookie=cookie)
    cookie = pair_of_cookie(set_cookie)
    body, _ = node.call("GET", "/count", cookie=cookie)
    assert body["views"] == 2, body
    body, _ = framework.call("GET", "/whoami", cookie=cookie)
    assert (body["user"], body["views"]) == ("bob", 2), body


FRAMEWORK_SCENARIOS: list[Callable[..., None]] = [framework_login_seen_by_node, node_value_seen_by_framework]
FRAMEWORKS = {"flask": ("flask", "flask_login"), "django": ("django",)}


# -- stores ----------------------------------------------------------------------------

@contextmanager
def file_store() -> Iterator[dict[str, str]]:
    folder = tempfile.mkdtemp(prefix="bunway-interop-")
    try:
        yield {"kind": "file", "env_STORE": "file", "env_STORE_PATH": folder, "path": folder}
    finally:
        shutil.rmtree(folder, True)


@contextmanager
def redis_store() -> Iterator[dict[str, str] | str]:
    """A private redis-server on a unix socket; or, when it cannot run, why not."""
    binary = shutil.which("redis-server")
    try:
        import redis
    except ImportError:
        yield "redis-py is not installed"
        return
    if binary is None:
        yield "redis-server is not installed"
        return
    folder = tempfile.mkdtemp(prefix="bunway-interop-redis-")
    socket_path = os.path.join(folder, "redis.sock")
    process = subprocess.Popen([binary, "--port", "0", "--unixsocket", socket_path, "--unixsocketperm", "700",
                                "--save", "", "--appendonly", "no", "--dir", folder],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(unix_socket_path=socket_path)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield {"kind": "redis", "env_STORE": "redis", "env_REDIS_SOCKET": socket_path}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(folder, True)


@contextmanager
def sqlite_store() -> Iterator[dict[str, str]]:
    folder = tempfile.mkdtemp(prefix="bunway-interop-sqlite-")
    try:
        path = os.path.join(folder, "sessions.sqlite3")
        yield {"kind": "sqlite", "env_STORE": "sqlite", "env_SQLITE_PATH": path}
    finally:
        shutil.rmtree(folder, True)


@contextmanager
def postgres_store() -> Iterator[dict[str, str] | str]:
    """A table in BUNWAY_PG_DSN's database, or in a private cluster (.ci/postgres); or why not."""
    try:
        from psycopg_pool import ConnectionPool
    except ImportError:
        yield "psycopg and psycopg-pool are not installed"
        return
    folder = None
    dsn = os.environ.get("BUNWAY_PG_DSN")
    if not dsn:
        folder = tempfile.mkdtemp(prefix="bunway-interop-pg-")
        os.chmod(folder, 0o755)
        done = subprocess.run([os.path.join(HERE, "..", ".ci", "postgres"), "start", os.path.join(folder, "cluster")],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            shutil.rmtree(folder, True)
            yield f"PostgreSQL could not start: {done.stderr.strip()[-200:]}"
            return
        dsn = done.stdout.strip()
    table = f"interop_{int(time.time() * 1000)}"
    parts = dict(part.split("=", 1) for part in dsn.split())
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        bs.PostgresStore(pool, table=table, create_table=True)   # connect-pg-simple's table
        try:
            yield {"kind": "postgres", "env_STORE": "postgres", "env_PG_DSN": dsn, "env_PG_TABLE": table,
                   "env_PG_HOST": parts.get("host", ""), "env_PG_USER": parts.get("user", ""),
                   "env_PG_DATABASE": parts.get("dbname", "")}
        finally:
            with pool.connection() as connection:
                connection.execute(f'DROP TABLE IF EXISTS "{table}"')
            if folder:
                subprocess.run([os.path.join(HERE, "..", ".ci", "postgres"), "stop", os.path.join(folder, "cluster")],
                               capture_output=True, timeout=120, check=False)
                shutil.rmtree(folder, True)


PYTHON_APPS = {"wsgi": "python_app.py", "asgi": "python_asgi_app.py"}


def start_sides(store: dict[str, str], python_app: str) -> list[Side]:
    """node, python (WSGI or ASGI), and node signing with the old secret."""
    env = {key[4:]: value for key, value in store.items() if key.startswith("env_")}
    node_cmd = ["node", os.path.join(HERE, "node_app.js")]
    python_cmd = [sys.executable, os.path.join(HERE, PYTHON_APPS[python_app])]
    sides: list[Side] = []
    try:
        sides.append(Side("node", node_cmd, {**env, "SECRET": SECRETS}))
        sides.append(Side(f"python ({python_app})", python_cmd, {**env, "SECRET": SECRETS}))
        sides.append(Side("node (old secret)", node_cmd, {**env, "SECRET": OLD_SECRET}))
    except BaseException:
        for side in sides:
            side.stop()
        raise
    return sides


def missing(python_app: str) -> str | None:
    """Why the Python app cannot run here, or None."""
    if python_app == "asgi":
        try:
            import uvicorn  # noqa: F401
        except ImportError:
            return "uvicorn is not installed"
    return None


def main() -> int:
    passed = failed = skipped = 0
    print(f"interop: node {subprocess.run(['node', '--version'], capture_output=True, text=True, check=False).stdout.strip()}, "
          f"Python {sys.version.split()[0]}; packages: "
          + ", ".join(f"{name} {version_of(name)}" for name in
                      ("express", "express-session", "session-file-store", "connect-redis", "redis",
                       "connect-sqlite3", "sqlite3", "connect-pg-simple", "pg", "connect-flash", "cookie-signature")))
    for make, kind in ((file_store, "file"), (redis_store, "redis"), (sqlite_store, "sqlite"),
                       (postgres_store, "postgres")):
        for python_app in PYTHON_APPS:
            with make() as store:
                why_not = store if isinstance(store, str) else missing(python_app)
                if why_not:
                    broke, left = cannot_run(f"{kind} ({python_app})", why_not, len(SCENARIOS) - (kind != "file"))
                    failed, skipped = failed + broke, skipped + left
                    continue
                assert not isinstance(store, str)
                sides = start_sides(store, python_app)
                try:
                    ran, broke = run_scenarios(f"{kind} ({python_app})", SCENARIOS, sides, store)
                    passed, failed = passed + ran, failed + broke
                finally:
                    for side in sides:
                        side.stop()
        for framework, modules in (FRAMEWORKS.items() if kind in ("file", "redis") else ()):
            with make() as store:
                why_not = store if isinstance(store, str) else missing_modules(modules)
                if why_not:
                    broke, left = cannot_run(f"{kind} ({framework})", why_not, len(FRAMEWORK_SCENARIOS))
                    failed, skipped = failed + broke, skipped + left
                    continue
                assert not isinstance(store, str)
                env = {key[4:]: value for key, value in store.items() if key.startswith("env_")}
                sides = [Side("node", ["node", os.path.join(HERE, "node_app.js")], {**env, "SECRET": SECRETS})]
                try:
                    sides.append(Side(framework, [sys.executable, os.path.join(HERE, "python_framework_app.py")],
                                      {**env, "SECRET": SECRETS, "FRAMEWORK": framework}))
                    ran, broke = run_scenarios(f"{kind} ({framework})", FRAMEWORK_SCENARIOS, sides, store)
                    passed, failed = passed + ran, failed + broke
                finally:
                    for side in sides:
                        side.stop()
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


def cannot_run(label: str, why_not: str, scenarios: int) -> tuple[int, int]:
    """A side that cannot run here: a failure when every component is required
    (BUNWAY_REQUIRE_ALL=1), else its scenarios skipped; (failed, skipped)."""
    if REQUIRE_ALL:
        print(f"FAIL {label}: {why_not}, and BUNWAY_REQUIRE_ALL=1")
        return 1, 0
    print(f"SKIP {label}: {why_not} (install it to run these scenarios)")
    return 0, scenarios


def run_scenarios(label: str, scenarios: list[Callable[..., None]], sides: list[Side],
                  store: Any) -> tuple[int, int]:
    """Run each scenario against the running sides; print PASS or FAIL; (passed, failed)."""
    passed = failed = 0
    for scenario in scenarios:
        name = f"{label}: {scenario.__name__.replace('_', ' ')}"
        try:
            scenario(*sides, store)
        except Skip:
            continue
        except Exception:  # noqa: BLE001 - reported as a failed scenario
            failed += 1
            print(f"FAIL {name}\n" + "".join("     " + line for line in traceback.format_exc().splitlines(True)[-6:]))
        else:
            passed += 1
            print(f"PASS {name}")
    return passed, failed


def missing_modules(modules: tuple[str, ...]) -> str | None:
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed"
    return None


def version_of(package: str) -> str:
    try:
        with open(os.path.join(HERE, "node_modules", package, "package.json"), encoding="utf-8") as file:
            return str(json.load(file)["version"])
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
