"""bunway_session with FastAPI: add_middleware, and a dependency that returns the session.

    uvicorn examples.fastapi_app:app            (from the repository's root)
"""

import os
import sys
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # bunway_session.py
from bunway_session import ASGISessionMiddleware, Session, get_session

app = FastAPI()
app.add_middleware(ASGISessionMiddleware, secret=os.environ.get("SESSION_SECRET", "change me"),
                   save_uninitialized=False)


def current_session(request: Request) -> Session:
    return get_session(request)


CurrentSession = Annotated[Session, Depends(current_session)]


@app.get("/")
async def home(session: CurrentSession):
    session["views"] = session.get("views", 0) + 1
    return {"user": session.get("user"), "views": session["views"]}


@app.post("/login")
async def login(session: CurrentSession, user: str = "alice"):
    session.regenerate()  # a new ID at login: an ID planted before it is worthless
    session["user"] = user
    return {"user": user}


@app.get("/private")
def private(session: CurrentSession):  # a sync view: FastAPI runs it on a worker thread
    if "user" not in session:
        raise HTTPException(401, "not logged in")
    return {"user": session["user"]}


@app.post("/logout")
async def logout(session: CurrentSession):
    session.destroy()
    return {"ok": True}
