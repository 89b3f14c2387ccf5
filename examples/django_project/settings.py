"""A Django project whose sessions are bunway sessions: request.session, auth.login(), the
admin and messages all use them, and a Node app with the same secret and store shares them.

    export SESSION_SECRET=$(python -c 'import secrets; print(secrets.token_hex(32))')
    export DJANGO_SETTINGS_MODULE=examples.django_project.settings
    python -m django migrate && python -m django createsuperuser
    uvicorn examples.django_project.asgi:application       (or: python -m django runserver)
"""

import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BASE_DIR.parent.parent))  # bunway_session.py (in a project: beside manage.py)
from bunway_session import FileStore

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")  # Django's own (CSRF...)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_project.urls"
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",   # Django's own middleware, our engine
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                       "django.contrib.auth.context_processors.auth",
                                       "django.contrib.messages.context_processors.messages"]},
}]
DATA_DIR = Path(os.environ.get("EXAMPLE_DATA_DIR", BASE_DIR / "data"))   # a folder this user owns
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "db.sqlite3"}}

# The sessions: bunway's engine, express-session's cookie name, and a store.
SESSION_ENGINE = "bunway_session"
SESSION_COOKIE_NAME = "connect.sid"
BUNWAY_SESSION = {
    "secret": os.environ["SESSION_SECRET"],
    "store": FileStore(DATA_DIR / "sessions"),
}
