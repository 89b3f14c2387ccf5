"""The example's views: a counter (async), a protected page with messages, logout."""

from django.contrib import admin, auth, messages
from django.http import JsonResponse
from django.shortcuts import redirect
from django.urls import path
from django.views.decorators.http import require_POST


async def home(request):
    views = await request.session.aget("views", 0) + 1   # the async session methods (Django 5.1+)
    await request.session.aset("views", views)
    user = await request.auser()
    return JsonResponse({"user": user.get_username() or None, "views": views})


def private(request):
    if not request.user.is_authenticated:
        return JsonResponse({"error": "not logged in"}, status=401)
    return JsonResponse({"user": request.user.get_username(),
                         "messages": [str(message) for message in messages.get_messages(request)]})


def hello(request):
    messages.info(request, f"Hello, {request.user.get_username()}")
    return redirect("/private")


@require_POST
def logout(request):
    auth.logout(request)   # flush(): the session leaves the store; the cookie is deleted
    return JsonResponse({"ok": True})


urlpatterns = [
    path("admin/", admin.site.urls),   # log in at /admin/login/ (auth.login: a new session ID)
    path("", home),
    path("private", private),
    path("hello", hello),
    path("logout", logout),
]
