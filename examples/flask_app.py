"""bunway_session with Flask and Flask-Login: flask.session is a bunway session, so
login_user() and @login_required work on it, and a Node app with the same secret and store
reads the login (_user_id).

    SESSION_SECRET=... python examples/flask_app.py [--port 8000]     (wsgiref, 127.0.0.1)

Under gunicorn: gunicorn examples.flask_app:app (with a FileStore or RedisStore: one
MemoryStore a process is not shared between gunicorn's workers).
"""

import argparse
import os
import sys
from wsgiref.simple_server import make_server

from flask import Flask, request, session
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # bunway_session.py
from bunway_session import FlaskSessionInterface

app = Flask(__name__)
# No app.secret_key: the session is signed with SESSION_SECRET and kept in the store.
app.session_interface = FlaskSessionInterface(secret=os.environ["SESSION_SECRET"], save_uninitialized=False)
login_manager = LoginManager(app)


class User(UserMixin):
    def __init__(self, user_id):
        self.id = user_id


@login_manager.user_loader
def load_user(user_id):
    return User(user_id)


@login_manager.unauthorized_handler
def unauthorized():
    return {"error": "not logged in"}, 401


@app.get("/")
def home():
    session["views"] = session.get("views", 0) + 1
    return {"user": current_user.get_id(), "views": session["views"]}


@app.post("/login")
def login():
    # login_user() sets session["_user_id"]: the session keeps its data under a new ID, and the
    # ID it had before the login is deleted (login_key="_user_id", the default).
    login_user(User(request.args.get("user", "alice")))
    return {"user": current_user.get_id()}


@app.get("/private")
@login_required
def private():
    return {"user": current_user.id}


@app.post("/logout")
def logout():
    logout_user()
    session.destroy()  # the session leaves the store; the response expires the cookie
    return {"ok": True}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The Flask + Flask-Login example on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000)
    server = make_server("127.0.0.1", parser.parse_args().port, app)
    print(f"Flask example running on http://127.0.0.1:{server.server_port}/", file=sys.stderr, flush=True)
    server.serve_forever()
