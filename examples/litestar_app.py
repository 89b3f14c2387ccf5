"""bunway_session with Litestar: DefineMiddleware, and request.session in handlers.

    uvicorn examples.litestar_app:app           (from the repository's root)

Litestar builds the middleware for each route; wrappers given no store share one
MemoryStore per process, so a login on /login is seen on /private. Give a FileStore or a
RedisStore (store=...) when several processes serve the app.
"""

import os
import sys

from litestar import Litestar, Request, get, post
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import DefineMiddleware

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # bunway_session.py
from bunway_session import ASGISessionMiddleware


@get("/")
async def home(request: Request) -> dict:
    request.session["views"] = request.session.get("views", 0) + 1
    return {"user": request.session.get("user"), "views": request.session["views"]}


@post("/login", status_code=200)
async def login(request: Request, user: str = "alice") -> dict:
    request.session.regenerate()  # a new ID at login: an ID planted before it is worthless
    request.session["user"] = user
    return {"user": user}


@get("/private")
async def private(request: Request) -> dict:
    if "user" not in request.session:
        raise NotAuthorizedException("not logged in")
    return {"user": request.session["user"]}


@post("/logout", status_code=200)
async def logout(request: Request) -> dict:
    request.session.destroy()
    return {"ok": True}


app = Litestar(
    route_handlers=[home, login, private, logout],
    middleware=[DefineMiddleware(ASGISessionMiddleware, secret=os.environ.get("SESSION_SECRET", "change me"),
                                 save_uninitialized=False)],
)
