"""The frameworks' own sessions in the interop check: a Flask app with Flask-Login on
FlaskSessionInterface (FRAMEWORK=flask), or a Django project on SESSION_ENGINE =
"bunway_session" with auth.login() (FRAMEWORK=django), on the store node_app.js uses.

Routes: GET /ping, GET /whoami ({id, user, views}), POST /login?user=NAME. Configured as
python_app.py is; prints "listening <port>" once it serves (wsgiref).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from python_app import OPTIONS

from bunway_session import FileStore, FlaskSessionInterface, RedisStore

SECRET = OPTIONS["secret"]


def make_store() -> Any:
    if os.environ.get("STORE") == "redis":
        import redis
        return RedisStore(redis.Redis(unix_socket_path=os.environ["REDIS_SOCKET"]), prefix="sess:")
    return FileStore(os.environ["STORE_PATH"])


def flask_app() -> Any:
    from flask import Flask, request, session
    from flask_login import LoginManager, UserMixin, current_user, login_user

    app = Flask(__name__)
    app.session_interface = FlaskSessionInterface(secret=SECRET, store=make_store(), save_uninitialized=False)
    manager = LoginManager(app)

    class User(UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    manager.user_loader(User)

    def me() -> dict[str, Any]:
        return {"side": "flask", "id": session.id, "user": current_user.get_id(), "views": session.get("views")}

    app.get("/ping")(lambda: {"ok": True})
    app.get("/whoami")(me)

    @app.post("/login")
    def login() -> Any:
        login_user(User(request.args["user"]))
        return me()
    return app


def django_app() -> Any:
    import django
    from django.conf import settings

    folder = tempfile.mkdtemp(prefix="bunway-interop-django-")
    settings.configure(
        SECRET_KEY="interop", ALLOWED_HOSTS=["127.0.0.1"], ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                    "django.contrib.auth.middleware.AuthenticationMiddleware"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(folder, "db.sqlite3")}},
        SESSION_ENGINE="bunway_session", SESSION_COOKIE_NAME="connect.sid", SESSION_COOKIE_AGE=86_400,
        BUNWAY_SESSION={"secret": SECRET, "store": make_store()},
    )
    django.setup()
    from django.contrib import auth
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application
    from django.http import JsonResponse
    from django.urls import path

    call_command("migrate", verbosity=0)

    def me(request: Any) -> Any:
        return JsonResponse({"side": "django", "id": request.session.session_key,
                             "user": request.user.get_username() or None, "views": request.session.get("views")})

    def login(request: Any) -> Any:
        user, _ = User.objects.get_or_create(username=request.GET["user"])
        auth.login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return me(request)

    globals()["urlpatterns"] = [path("ping", lambda request: JsonResponse({"ok": True})),
                                path("whoami", me), path("login", login)]
    return get_wsgi_application()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


if __name__ == "__main__":
    app = flask_app() if os.environ["FRAMEWORK"] == "flask" else django_app()
    server = make_server("127.0.0.1", int(os.environ["PORT"]), app, handler_class=QuietHandler)
    print(f"listening {server.server_port}", flush=True)
    server.serve_forever()
