"""bunway_session with Quart: wrap app.asgi_app; views call get_session(request).

    uvicorn examples.quart_app:app              (from the repository's root)
"""

import os
import sys

from quart import Quart, request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # bunway_session.py
from bunway_session import ASGISessionMiddleware, get_session

app = Quart(__name__)
# Quart's own `session` is a signed cookie; this one is server-side and reached with get_session.
app.asgi_app = ASGISessionMiddleware(app.asgi_app, secret=os.environ.get("SESSION_SECRET", "change me"),
                                     save_uninitialized=False)


@app.get("/")
async def home():
    session = get_session(request)
    session["views"] = session.get("views", 0) + 1
    return {"user": session.get("user"), "views": session["views"]}


@app.post("/login")
async def login():
    session = get_session(request)
    session.regenerate()  # a new ID at login: an ID planted before it is worthless
    session["user"] = request.args.get("user", "alice")
    return {"user": session["user"]}


@app.get("/private")
async def private():
    session = get_session(request)
    if "user" not in session:
        return {"error": "not logged in"}, 401
    return {"user": session["user"]}


@app.post("/logout")
async def logout():
    get_session(request).destroy()
    return {"ok": True}
