"""bunway_session with Quart: quart.session is a bunway session (QuartSessionInterface).

    SESSION_SECRET=... uvicorn examples.quart_app:app          (from the repository's root)
"""

import os
import sys

from quart import Quart, request, session

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # bunway_session.py
from bunway_session import QuartSessionInterface

app = Quart(__name__)
app.session_interface = QuartSessionInterface(secret=os.environ["SESSION_SECRET"], save_uninitialized=False)


@app.get("/")
async def home():
    session["views"] = session.get("views", 0) + 1
    return {"user": session.get("_user_id"), "views": session["views"]}


@app.post("/login")
async def login():
    # Setting the login key (login_key="_user_id", the default) is a login: the session keeps
    # its data under a new ID, and the ID it had before is deleted.
    session["_user_id"] = request.args.get("user", "alice")
    return {"user": session["_user_id"]}


@app.get("/private")
async def private():
    if "_user_id" not in session:
        return {"error": "not logged in"}, 401
    return {"user": session["_user_id"]}


@app.post("/logout")
async def logout():
    session.destroy()  # the session leaves the store; the response expires the cookie
    return {"ok": True}
