"""The bunway_session side of the interop check, as a WSGI app: the same routes as node_app.js.
python_asgi_app.py serves the same routes under ASGI.

Configured by environment: PORT (0: any free port), SECRET (comma-separated, first signs),
STORE (file|redis|sqlite|postgres), STORE_PATH, REDIS_SOCKET, SQLITE_PATH, PG_DSN, PG_TABLE. Prints "listening <port>" once it serves.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bunway_session import (
    FileStore,
    PostgresStore,
    RedisStore,
    Session,
    SessionMiddleware,
    SQLiteStore,
    get_session,
)

OPTIONS: dict[str, Any] = {
    "secret": os.environ.get("SECRET", "interop secret").split(","), "name": "connect.sid",
    "resave": False, "save_uninitialized": False, "cookie": {"max_age": 86_400_000, "same_site": "lax"},
}


def genid(headers: dict[str, str]) -> str:
    """A test may ask for a given ID (X-Interop-Id), to compare both sides' cookies for it."""
    return headers.get("x-interop-id") or secrets.token_urlsafe(24)


def me(session: Session) -> dict[str, Any]:
    return {"side": "python", "id": session.id, "user": session.get("user"), "views": session.get("views")}


def route(session: Session, method: str, path: str, query: dict[str, str]) -> tuple[int, Any]:
    """Every route but /length: (status, JSON body)."""
    if (method, path) == ("GET", "/ping"):
        return 200, {"ok": True}
    if (method, path) == ("GET", "/count"):
        session["views"] = (session.get("views") or 0) + 1
        return 200, me(session)
    if (method, path) == ("GET", "/whoami"):
        return 200, me(session)
    if (method, path) == ("POST", "/flash"):
        return 200, {"count": session.flash(query["type"], query["msg"])}
    if (method, path) == ("GET", "/flash"):
        return 200, {"messages": session.flash(query["type"])}
    if (method, path) == ("POST", "/login"):
        session.regenerate()
        session["user"] = query["user"]
        return 200, me(session)
    if (method, path) == ("POST", "/logout"):
        session.destroy()
        return 200, {"ok": True}
    if (method, path) == ("POST", "/short"):
        session.cookie.max_age = int(query["ms"])
        session["views"] = (session.get("views") or 0) + 1
        return 200, me(session)
    return 404, {"error": "not found"}


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    query = {key: values[0] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    if (method, path) == ("GET", "/length"):
        status, body = 200, {"length": store.length()}
    elif (method, path) == ("GET", "/devices"):   # a user's sessions (user_key="user")
        status, body = 200, {"sessions": sorted(store.sessions_of(query["user"]))}
    else:
        status, body = route(get_session(environ), method, path, query)
    data = json.dumps(body).encode()
    start_response(f"{status} {'OK' if status == 200 else 'Not Found'}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def make_store() -> Any:
    kind = os.environ.get("STORE")
    if kind == "redis":
        import redis
        return RedisStore(redis.Redis(unix_socket_path=os.environ["REDIS_SOCKET"]), prefix="sess:", user_key="user")
    if kind == "sqlite":
        return SQLiteStore(os.environ["SQLITE_PATH"], table="sessions", user_key="user")
    if kind == "postgres":
        from psycopg_pool import ConnectionPool
        return PostgresStore(ConnectionPool(os.environ["PG_DSN"], min_size=1, max_size=8, open=True),
                             table=os.environ["PG_TABLE"], user_key="user")
    return FileStore(os.environ["STORE_PATH"], user_key="user")


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


if __name__ == "__main__":
    store = make_store()
    wrapped = SessionMiddleware(app, store=store, **OPTIONS, genid=lambda environ: genid(
        {"x-interop-id": environ.get("HTTP_X_INTEROP_ID", "")}))
    server = make_server("127.0.0.1", int(os.environ["PORT"]), wrapped, server_class=Server,
                         handler_class=QuietHandler)
    signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
    print(f"listening {server.server_port}", flush=True)
    server.serve_forever()
