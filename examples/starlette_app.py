"""bunway_session with Starlette: request.session, login that regenerates, logout that destroys.

    uvicorn examples.starlette_app:app          (from the repository's root)
"""

import os
import sys

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # bunway_session.py
from bunway_session import ASGISessionMiddleware


async def home(request):
    request.session["views"] = request.session.get("views", 0) + 1
    return JSONResponse({"user": request.session.get("user"), "views": request.session["views"]})


async def login(request):
    request.session.regenerate()  # a new ID at login: an ID planted before it is worthless
    request.session["user"] = request.query_params.get("user", "alice")
    return JSONResponse({"user": request.session["user"]})


async def private(request):
    if "user" not in request.session:
        return JSONResponse({"error": "not logged in"}, status_code=401)
    return JSONResponse({"user": request.session["user"]})


async def logout(request):
    request.session.destroy()
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[Route("/", home), Route("/login", login, methods=["POST"]), Route("/private", private),
            Route("/logout", logout, methods=["POST"])],
    middleware=[Middleware(ASGISessionMiddleware, secret=os.environ.get("SESSION_SECRET", "change me"),
                           save_uninitialized=False)],
)
