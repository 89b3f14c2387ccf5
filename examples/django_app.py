"""bunway_session with Django under an ASGI server: wrap the application in asgi.py; views
call get_session(request). A whole (one-file) Django project:

    uvicorn examples.django_app:application     (from the repository's root)

In a real project the last lines go into asgi.py, after get_asgi_application().
"""

import json
import os
import sys

import django
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.http import HttpResponse, HttpResponseNotAllowed
from django.urls import path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # bunway_session.py
from bunway_session import ASGISessionMiddleware, get_session

settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["127.0.0.1", "localhost"], ROOT_URLCONF=__name__, SECRET_KEY="change me",
    MIDDLEWARE=[],  # Django's own session middleware is not needed: this session lives in the scope
)
django.setup()


def reply(data, status=200):
    return HttpResponse(json.dumps(data), status=status, content_type="application/json")


def home(request):  # sync views run on a worker thread; the session works there as everywhere
    session = get_session(request)
    session["views"] = session.get("views", 0) + 1
    return reply({"user": session.get("user"), "views": session["views"]})


def login(request):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    session = get_session(request)
    session.regenerate()  # a new ID at login: an ID planted before it is worthless
    session["user"] = request.GET.get("user", "alice")
    return reply({"user": session["user"]})


def private(request):
    session = get_session(request)
    if "user" not in session:
        return reply({"error": "not logged in"}, 401)
    return reply({"user": session["user"]})


def logout(request):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    get_session(request).destroy()
    return reply({"ok": True})


urlpatterns = [path("", home), path("login", login), path("private", private), path("logout", logout)]

# asgi.py
application = ASGISessionMiddleware(get_asgi_application(), secret=os.environ.get("SESSION_SECRET", "change me"),
                                    save_uninitialized=False)
