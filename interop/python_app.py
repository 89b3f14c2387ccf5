"""The bunway_session side of the interop check: the same routes as node_app.js.

Configured by environment: PORT (0: any free port), SECRET (comma-separated, first signs),
STORE (file|redis), STORE_PATH, REDIS_SOCKET. Prints "listening <port>" once it serves.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bunway_session import (
    FileStore,
    RedisStore,
    Session,
    SessionMiddleware,
    get_session,
)


def me(session: Session) -> dict[str, Any]:
    return {"side": "python", "id": session.id, "user": session.get("user"), "views": session.get("views")}


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    session = get_session(environ)
    query = {key: values[0] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    route = (environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"))
    status, body = "200 OK", None
    if route == ("GET", "/ping"):
        body = {"ok": True}
    elif route == ("GET", "/count"):
        session["views"] = (session.get("views") or 0) + 1
        body = me(session)
    elif route == ("GET", "/whoami"):
        body = me(session)
    elif route == ("POST", "/flash"):
        body = {"count": session.flash(query["type"], query["msg"])}
    elif route == ("GET", "/flash"):
        body = {"messages": session.flash(query["type"])}
    elif route == ("POST", "/login"):
        session.regenerate()
        session["user"] = query["user"]
        body = me(session)
    elif route == ("POST", "/logout"):
        session.destroy()
        body = {"ok": True}
    elif route == ("POST", "/short"):
        session.cookie.max_age = int(query["ms"])
        session["views"] = (session.get("views") or 0) + 1
        body = me(session)
    elif route == ("GET", "/length"):
        body = {"length": store.length()}
    else:
        status, body = "404 Not Found", {"error": "not found"}
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def make_store() -> Any:
    if os.environ.get("STORE") == "redis":
        import redis
        return RedisStore(redis.Redis(unix_socket_path=os.environ["REDIS_SOCKET"]), prefix="sess:")
    return FileStore(os.environ["STORE_PATH"])


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


store = make_store()
wrapped = SessionMiddleware(
    app, secret=os.environ.get("SECRET", "interop secret").split(","), name="connect.sid",
    resave=False, save_uninitialized=False, store=store,
    cookie={"max_age": 86_400_000, "same_site": "lax"},
    # A test may ask for a given ID, to compare both sides' cookies for it.
    genid=lambda environ: environ.get("HTTP_X_INTEROP_ID") or __import__("secrets").token_urlsafe(24))

if __name__ == "__main__":
    server = make_server("127.0.0.1", int(os.environ["PORT"]), wrapped, server_class=Server,
                         handler_class=QuietHandler)
    signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
    print(f"listening {server.server_port}", flush=True)
    server.serve_forever()
