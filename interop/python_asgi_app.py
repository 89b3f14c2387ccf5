"""The bunway_session side of the interop check as an ASGI app under uvicorn: the routes of
python_app.py, with AsyncRedisStore on Redis and FileStore on files.

Configured as python_app.py is. Prints "listening <port>" once it serves.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import sys
from typing import Any
from urllib.parse import parse_qs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from python_app import OPTIONS, genid, route

from bunway_session import (
    ASGISessionMiddleware,
    AsyncPostgresStore,
    AsyncRedisStore,
    FileStore,
    SQLiteStore,
    get_session,
)


def make_store() -> Any:
    kind = os.environ.get("STORE")
    if kind == "redis":
        import redis.asyncio
        return AsyncRedisStore(redis.asyncio.Redis(unix_socket_path=os.environ["REDIS_SOCKET"]), prefix="sess:",
                               user_key="user")
    if kind == "sqlite":
        return SQLiteStore(os.environ["SQLITE_PATH"], table="sessions", user_key="user")
    if kind == "postgres":   # the pool opens on the server's event loop, at the first request
        from psycopg_pool import AsyncConnectionPool
        return AsyncPostgresStore(AsyncConnectionPool(os.environ["PG_DSN"], min_size=1, max_size=8, open=False),
                                  table=os.environ["PG_TABLE"], user_key="user")
    return FileStore(os.environ["STORE_PATH"], user_key="user")


store = make_store()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    query = {key: values[0] for key, values in parse_qs(scope["query_string"].decode()).items()}
    method, path = scope["method"], scope["path"]
    if (method, path) == ("GET", "/length"):
        length = store.length()
        status, body = 200, {"length": await length if inspect.isawaitable(length) else length}
    elif (method, path) == ("GET", "/devices"):   # a user's sessions (user_key="user")
        of = getattr(store, "asessions_of", None) or store.sessions_of
        found = of(query["user"])
        status, body = 200, {"sessions": sorted(await found if inspect.isawaitable(found) else found)}
    else:
        status, body = route(get_session(scope), method, path, query)
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def scope_headers(scope: dict[str, Any]) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


sessions = ASGISessionMiddleware(app, store=store, **OPTIONS, genid=lambda scope: genid(scope_headers(scope)))


async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
    pool = getattr(store, "pool", None)
    if pool is not None and getattr(pool, "closed", False):   # an AsyncConnectionPool opens on the loop
        await pool.open()
    await sessions(scope, receive, send)

if __name__ == "__main__":
    import uvicorn
    listener = socket.socket()
    listener.bind(("127.0.0.1", int(os.environ["PORT"])))
    listener.listen()   # connections wait in the backlog until uvicorn accepts them
    print(f"listening {listener.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(wrapped, log_level="warning", lifespan="off")).run(sockets=[listener])
