"""bunway_session: express-session for any WSGI or ASGI application, in one stdlib-only file.

Wrap an application and every request gets a server-side session, identified by a
signed cookie and kept in a store (memory, files, Redis, SQLite or PostgreSQL)::

    from bunway_session import SessionMiddleware, get_session

    def app(environ, start_response):
        session = get_session(environ)
        session["views"] = session.get("views", 0) + 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"views: {session['views']}".encode()]

    app = SessionMiddleware(app, secret=os.environ["SESSION_SECRET"])

ASGI apps (Starlette, FastAPI, Litestar, ...) take ASGISessionMiddleware with the same
options. Flask's, Quart's and Django's own sessions can be bunway sessions too, so their
auth stacks run on them::

    app.session_interface = FlaskSessionInterface(secret=...)      # flask.session
    app.session_interface = QuartSessionInterface(secret=...)      # quart.session
    SESSION_ENGINE = "bunway_session"                              # Django settings, with
    BUNWAY_SESSION = {"secret": ..., "store": ...}                 # request.session

Options, defaults, lifecycle rules and wire formats are express-session's, so a Node
service and a Python service sharing a secret and a store share their users' sessions.
A store given user_key= lists and ends a user's sessions (sessions_of, destroy_sessions_of).
``python bunway_session.py`` serves a small demo on 127.0.0.1:8000.
"""

from __future__ import annotations

import asyncio
import binascii
import difflib
import errno
import functools
import hashlib
import heapq
import hmac
import importlib
import inspect
import json
import json.encoder
import json.scanner
import logging
import math
import os
import re
import secrets as _secrets
import shutil
import stat
import sys
import threading
import time
from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # for annotations only: these need Python 3.10 / 3.11 at run time
    from typing import Self, TypeAlias

try:  # POSIX: cross-process locks for FileStore; elsewhere they hold within one process
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ASGISessionMiddleware",
    "AsyncPostgresStore",
    "AsyncRedisStore",
    "FileStore",
    "FlaskSessionInterface",
    "MemoryStore",
    "PostgresStore",
    "QuartSessionInterface",
    "RedisStore",
    "SQLiteStore",
    "Session",
    "SessionCookie",
    "SessionMiddleware",
    "Store",
    "get_session",
    "sign",
    "unsign",
]

__version__ = "1.0.0"

log = logging.getLogger("bunway_session")

if TYPE_CHECKING:  # aliases for annotations only, so they may use 3.10+ syntax
    Secret: TypeAlias = str | bytes
    Document: TypeAlias = dict[str, Any]
    Clock: TypeAlias = Callable[[], float]
    WSGIEnviron: TypeAlias = dict[str, Any]
    StartResponse: TypeAlias = Callable[..., Callable[[bytes], object]]
    WSGIApp: TypeAlias = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

ENVIRON_KEY = "bunway.session"
DAY_MS = 86_400_000


# ---------------------------------------------------------------------------
# Wire format: signing, cookies, timestamps, JSON (byte-compatible with Node)
# ---------------------------------------------------------------------------

def _secret_bytes(secret: Secret) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))


@functools.lru_cache(maxsize=32)
def _hmac_sha256_keyed(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) with the key's part done once: the SHA-256 states after the
    inner and the outer padded key. A signature then costs two state copies, half of what
    a new HMAC does (the wire-format tests pin it to Node's cookie-signature)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return hashlib.sha256(key.translate(_INNER_PAD)), hashlib.sha256(key.translate(_OUTER_PAD))


def _signature(value: str, key: bytes) -> str:
    inner_keyed, outer_keyed = _hmac_sha256_keyed(key)
    inner = inner_keyed.copy()
    inner.update(value.encode("utf-8"))
    outer = outer_keyed.copy()
    outer.update(inner.digest())
    return binascii.b2a_base64(outer.digest(), newline=False).decode("ascii").rstrip("=")


def sign(value: str, secret: Secret) -> str:
    """Sign `value` as the npm package cookie-signature does: value.base64(HMAC-SHA256)."""
    return value + "." + _signature(value, _secret_bytes(secret))


def unsign(signed: str, secret: Secret | Sequence[Secret]) -> str | None:
    """Return the value signed into `signed` if any of the secrets verifies it, else None.

    The value is everything before the last ".", and the comparison is constant-time.
    """
    keys = [secret] if isinstance(secret, (str, bytes)) else secret
    return _verify(signed, [_secret_bytes(key) for key in keys])[0]


def _verify(signed: str, keys: Sequence[bytes]) -> tuple[str | None, int]:
    """(value, index of the key that verified it), or (None, -1)."""
    dot = signed.rfind(".")
    if dot < 0:
        return None, -1
    value = signed[:dot]
    given = signed[dot + 1:].encode("utf-8", "replace")
    for index, key in enumerate(keys):
        # Comparing the signatures compares the whole strings: the values are the same.
        if hmac.compare_digest(_signature(value, key).encode("ascii"), given):
            return value, index
    return None, -1


def _decode_cookie_value(value: str) -> str:
    """decodeURIComponent, falling back to the raw value when it is not valid (a bad
    escape, or bytes that are not UTF-8), as the `cookie` package does."""
    if "%" not in value:
        return value
    parts = value.split("%")
    decoded = bytearray(parts[0].encode("utf-8"))
    for part in parts[1:]:
        code = part[:2]
        if len(code) != 2 or not code.isascii() or not code.isalnum():
            return value
        try:
            decoded.append(int(code, 16))
        except ValueError:
            return value
        decoded += part[2:].encode("utf-8")
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _find_cookie(header: str, name: str) -> str | None:
    """The first cookie called `name` in a Cookie header, not yet decoded, read as express's
    `cookie` package reads each "name=value" piece: the name ends at the first "=", both
    are trimmed, one pair of quotes is removed.

    Unlike SimpleCookie.load, which stops at the first cookie it dislikes, a malformed
    piece here is skipped and the rest are still read, as browsers and express do.
    """
    for part in header.split(";"):
        if name not in part:  # cheap skip of the other cookies
            continue
        key, eq, value = part.partition("=")
        if eq and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            return value
    return None


# encodeURIComponent leaves A-Z a-z 0-9 and -_.!~*'() alone and escapes the UTF-8 bytes of the rest.
_URI_UNSAFE = re.compile(r"[^A-Za-z0-9\-_.!~*'()]")
_URI_ESCAPES = {chr(code): f"%{code:02X}" for code in range(128)}


def _percent_encode(match: re.Match[str]) -> str:
    char = match.group()
    return _URI_ESCAPES.get(char) or "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def _encode_uri_component(value: str) -> str:
    return _URI_UNSAFE.sub(_percent_encode, value)


def serialize_set_cookie(name: str, value: str, cookie: SessionCookie, expires_ms: int | None) -> str:
    """A Set-Cookie value, attribute for attribute as express-session (via `cookie`) writes it;
    `value` is already percent-encoded, `expires_ms` the Expires attribute (None: none)."""
    head, tail = _cookie_attributes(cookie.domain, cookie.path, cookie.http_only, cookie.secure,
                                    cookie.partitioned, cookie.priority, cookie.same_site)
    if expires_ms is None:
        return name + "=" + value + head + tail
    return name + "=" + value + head + "; Expires=" + _http_date_of_second(expires_ms // 1000) + tail


@functools.lru_cache(maxsize=64)
def _cookie_attributes(domain: str | None, path: str | None, http_only: bool, secure: bool, partitioned: bool,
                       priority: str | None, same_site: str | None) -> tuple[str, str]:
    """The attributes written before Expires and after it: most cookies share them."""
    head = ("; Domain=" + domain if domain else "") + ("; Path=" + path if path else "")
    tail = [""]
    if http_only:
        tail.append("HttpOnly")
    if secure:
        tail.append("Secure")
    if partitioned:
        tail.append("Partitioned")
    if priority:
        tail.append("Priority=" + priority.capitalize())
    if same_site:
        tail.append("SameSite=" + same_site.capitalize())
    return head, "; ".join(tail)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UTC = timezone(timedelta(0))  # datetime.UTC is Python 3.11+
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_ONE_MS = timedelta(milliseconds=1)

# Timestamps are written and read on every request, mostly within the same few seconds:
# the conversions are pure functions, so their per-second part is remembered.


@functools.lru_cache(maxsize=64)
def _http_date_of_second(seconds: int) -> str:
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def _http_date(ms: int) -> str:
    """RFC 1123 date as JavaScript's Date.prototype.toUTCString writes it (never localised)."""
    return _http_date_of_second(ms // 1000)


@functools.lru_cache(maxsize=64)
def _iso_of_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


_ISO_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


def _iso_ms(ms: int) -> str:
    """JavaScript's Date.prototype.toISOString: 2026-11-27T20:05:56.662Z."""
    return _iso_of_second(ms // 1000) + _ISO_MILLIS[ms % 1000]


@functools.lru_cache(maxsize=64)
def _second_of_iso(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=_UTC)
    return (moment - _EPOCH) // timedelta(seconds=1)


def _parse_iso_ms(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 timestamp (what toISOString writes); ValueError if not one."""
    if len(text) == 24 and text[19] == "." and text[23] == "Z" and text[20:23].isdigit():
        return _second_of_iso(text[:19]) * 1000 + int(text[20:23])  # toISOString's own form
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    return (moment - _EPOCH) // _ONE_MS


def _datetime_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _ONE_MS


def _now_ms(now: Clock) -> int:
    return int(now() * 1000)


def _json_encoder() -> Callable[[Any, int], Sequence[str]]:
    """JSON exactly as JSON.stringify writes it: no spaces, no ASCII escaping. NaN and
    Infinity are refused because JavaScript would not read them back. Returns the C
    encoder itself: encode(value, 0) gives the pieces of the JSON text.

    JSONEncoder.encode builds a new C encoder on every call; building it once is about
    twice as fast, and every request encodes a few times.
    """
    encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    try:
        if make is not None:
            return make(None, encoder.default, json.encoder.c_encode_basestring,  # type: ignore[no-any-return,attr-defined]
                        None, ":", ",", False, False, False)
    except TypeError:  # another Python's signature
        pass
    return lambda value, _level: (encoder.encode(value),)


_encode_json = _json_encoder()


def _dumps(value: Any) -> str:
    return "".join(_encode_json(value, 0))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of the range of a double")
    return value


# One JSON parser for everything stored: the C scanner, called directly (json.loads adds
# three Python calls around it), refusing what JavaScript cannot hold: NaN, Infinity and
# numbers out of range.
_scan_json = json.scanner.make_scanner(  # (typeshed types the decoder argument oddly)
    json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float))  # type: ignore[arg-type]
_JSON_SPACE = " \t\n\r"


def _loads(text: str) -> Any:
    """The one JSON value in `text`. ValueError when there is not exactly one, or it holds
    NaN, Infinity or a number out of range; RecursionError when it nests deeper than the
    interpreter's recursion limit (Node reads deeper documents than Python)."""
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:  # no value at the start: leading whitespace, or none at all
        stripped = text.lstrip(_JSON_SPACE)
        if stripped == text or not stripped:
            raise ValueError("not a JSON value") from None
        return _loads(stripped)
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        raise ValueError(f"extra data after the JSON value, at character {end}")
    return value


def _loads_document(text: str | bytes) -> Document | None:
    """A stored session document parsed from JSON text, or None when it is not one: every
    store's one rule (section 10) is a JSON object with a `cookie` object, as express-session
    writes them (express-session itself fails on a document without one)."""
    try:
        document = _loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    return document if document.__class__ is dict and document.get("cookie").__class__ is dict else None


def _document_expires_ms(document: Mapping[str, Any]) -> int | None:
    """cookie.expires of a stored document as epoch ms; None when it has none.

    Raises ValueError when the field is there but is not a timestamp.
    """
    cookie = document.get("cookie")
    return _cookie_expires_ms(cookie) if isinstance(cookie, dict) else None


class _CookieObject(dict):  # type: ignore[type-arg]
    """A `cookie` object SessionCookie.to_dict() made, which remembers its expiry in ms: the
    stores read it back without parsing the ISO date they were just given."""

    __slots__ = ("expires_ms",)
    expires_ms: int | None


class _LoadedDocument(dict):  # type: ignore[type-arg]
    """A document MemoryStore's get returns, with the JSON of its data as stored (what encoding
    the loaded session gives again): the lifecycle's reference copy, without encoding it."""

    __slots__ = ("data_json",)
    data_json: str


def _cookie_expires_ms(cookie: Mapping[str, Any]) -> int | None:
    """The same, of a stored cookie object."""
    if cookie.__class__ is _CookieObject:
        return cookie.expires_ms
    expires = cookie.get("expires")
    if expires is None:
        return None
    if isinstance(expires, str):
        return _parse_iso_ms(expires)
    raise ValueError(f"cookie.expires is not a timestamp: {expires!r}")


# ---------------------------------------------------------------------------
# The session: SessionCookie and Session
# ---------------------------------------------------------------------------

_SAME_SITE_VALUES = ("strict", "lax", "none")
_PRIORITY_VALUES = ("low", "medium", "high")
_ATTRIBUTE_VALUE = re.compile(r"[\x21-\x3a\x3c-\x7e]+")    # no controls, spaces or ";"
_MAX_EXPIRES_MS = 253_402_300_799_999   # 9999-12-31T23:59:59.999Z: the last moment a date here can hold


def _valid_path(path: Any) -> bool:
    """Can `path` go into a Set-Cookie header as the Path attribute?"""
    return path.__class__ is str and path.startswith("/") and _ATTRIBUTE_VALUE.fullmatch(path) is not None


def _valid_domain(domain: Any) -> bool:
    """Can `domain` go into a Set-Cookie header as the Domain attribute?"""
    return domain.__class__ is str and _ATTRIBUTE_VALUE.fullmatch(domain) is not None


def _checked_expiry(expires_ms: int, option: str) -> int:
    """An expiry that dates can hold (years 1970 to 9999), or ValueError naming the option."""
    if not 0 <= expires_ms <= _MAX_EXPIRES_MS:
        year = "before 1970" if expires_ms < 0 else "after the year 9999"
        raise ValueError(f"{option} would make the cookie expire {year}, which a cookie's date cannot "
                         "say; give a shorter time")
    return expires_ms


def _expiry_after(now_ms: int, lifetime_ms: int) -> int:
    """now + lifetime, kept within what dates can hold (a stored lifetime may be absurd)."""
    expires_ms = now_ms + lifetime_ms
    if 0 <= expires_ms <= _MAX_EXPIRES_MS:
        return expires_ms
    return 0 if expires_ms < 0 else _MAX_EXPIRES_MS


def _millis(value: Any, option: str) -> int | None:
    """A duration option (int/float milliseconds or a timedelta) as whole milliseconds."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value // _ONE_MS
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be milliseconds (an int) or a datetime.timedelta, "
                        f"not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number of milliseconds, not {value!r}")
    return int(value)


class SessionCookie:
    """The session cookie's attributes and expiry, stored with the session as express-session does."""

    __slots__ = (
        "_expires_ms",
        "_now",
        "domain",
        "http_only",
        "original_max_age",
        "partitioned",
        "path",
        "priority",
        "same_site",
        "secure",
    )

    def __init__(self, *, original_max_age: int | None = None, expires_ms: int | None = None,
                 secure: bool = False, http_only: bool = True, path: str = "/",
                 domain: str | None = None, same_site: str | None = "lax",
                 partitioned: bool = False, priority: str | None = None,
                 now: Clock = time.time) -> None:
        self.original_max_age = original_max_age
        self._expires_ms = expires_ms
        self.secure = secure
        self.http_only = http_only
        self.path = path
        self.domain = domain
        self.same_site = same_site
        self.partitioned = partitioned
        self.priority = priority
        self._now = now

    @property
    def expires(self) -> datetime | None:
        """When the cookie expires (an aware UTC datetime), or None for a browser-session cookie."""
        if self._expires_ms is None:
            return None
        return _EPOCH + timedelta(milliseconds=self._expires_ms)

    @expires.setter
    def expires(self, moment: datetime | None) -> None:
        if moment is None:
            self._expires_ms = None
            self.original_max_age = None
            return
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise TypeError("cookie.expires must be a timezone-aware datetime "
                            "(e.g. datetime.now(timezone.utc) + timedelta(days=30)) or None")
        self._expires_ms = _checked_expiry(_datetime_ms(moment), "cookie.expires")
        # express-session: setting expires also sets originalMaxAge to what remains.
        self.original_max_age = self._expires_ms - _now_ms(self._now)

    @property
    def max_age(self) -> int | None:
        """Milliseconds until the cookie expires, or None for a browser-session cookie."""
        if self._expires_ms is None:
            return None
        return self._expires_ms - int(self._now() * 1000)

    @max_age.setter
    def max_age(self, value: float | timedelta | None) -> None:
        ms = _millis(value, "cookie.max_age")
        expires_ms = None if ms is None else _checked_expiry(_now_ms(self._now) + ms, "cookie.max_age")
        self.original_max_age = ms
        self._expires_ms = expires_ms

    def reset_expiry(self) -> None:
        """express-session's touch: expires = now + original max age."""
        if self.original_max_age is None:
            self._expires_ms = None
        else:
            self._expires_ms = _expiry_after(int(self._now() * 1000), self.original_max_age)

    def to_dict(self) -> Document:
        """The stored `cookie` object, field for field and in express-session's order."""
        expires = None if self._expires_ms is None else _iso_ms(self._expires_ms)
        data = _CookieObject()
        data.expires_ms = self._expires_ms
        if not self.partitioned and self.priority is None and self.domain is None and self.same_site is not None:
            # The usual cookie (the same fields in the same order as below).
            data["originalMaxAge"] = self.original_max_age
            data["expires"] = expires
            data["secure"] = self.secure
            data["httpOnly"] = self.http_only
            data["path"] = self.path
            data["sameSite"] = self.same_site
            return data
        data["originalMaxAge"] = self.original_max_age
        if self.partitioned:
            data["partitioned"] = True
        if self.priority is not None:
            data["priority"] = self.priority
        data["expires"] = expires
        data["secure"] = self.secure
        data["httpOnly"] = self.http_only
        if self.domain is not None:
            data["domain"] = self.domain
        data["path"] = self.path
        if self.same_site is not None:
            data["sameSite"] = self.same_site
        return data

    def _shape_key(self) -> tuple[Any, ...]:
        """The fields to_dict() writes, but the expiry: equal keys, equal objects but for expires."""
        return (self.original_max_age, self.partitioned, self.priority, self.secure, self.http_only,
                self.domain, self.path, self.same_site)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], now: Clock = time.time) -> SessionCookie:
        """Read a stored cookie object, written by us or by Node; missing fields take their
        absent meaning. What could not have been set as an option raises ValueError (the
        stored cookie is unusable, so the request gets a new session): a path or domain that
        is not a valid cookie attribute (';', spaces, control characters), an unknown
        sameSite or priority, an expires that is not a date, an originalMaxAge out of range.
        So nothing a store holds reaches a header unchecked."""
        get = data.get
        # Every loaded session makes one: set the fields directly (keyword binding costs more).
        cookie = cls.__new__(cls)
        cookie._expires_ms = data.expires_ms if data.__class__ is _CookieObject else _cookie_expires_ms(data)
        original = get("originalMaxAge")
        if original.__class__ is float and math.isfinite(original):
            original = int(original)
        if original.__class__ is not int:
            original = None  # (a browser-session cookie, as express-session reads a non-number)
        elif not -_MAX_EXPIRES_MS <= original <= _MAX_EXPIRES_MS:
            raise ValueError(f"cookie.originalMaxAge is out of range: {original!r}")
        cookie.original_max_age = original
        path = get("path")
        if path is None:
            path = "/"
        elif path != "/" and not _valid_path(path):
            raise ValueError(f"cookie.path is not a cookie path: {path!r}")
        cookie.path = path
        domain = get("domain")
        if domain is not None and not _valid_domain(domain):
            raise ValueError(f"cookie.domain is not a host name: {domain!r}")
        cookie.domain = domain
        same_site = get("sameSite")
        if same_site is True:  # the `cookie` package reads true as Strict
            same_site = "strict"
        elif same_site is False:
            same_site = None
        elif same_site is not None and same_site not in _SAME_SITE_VALUES:
            if same_site.__class__ is not str or same_site.lower() not in _SAME_SITE_VALUES:
                raise ValueError(f"cookie.sameSite is not strict, lax or none: {same_site!r}")
            same_site = same_site.lower()
        cookie.same_site = same_site
        priority = get("priority")
        if priority is not None and priority not in _PRIORITY_VALUES:
            if priority.__class__ is not str or priority.lower() not in _PRIORITY_VALUES:
                raise ValueError(f"cookie.priority is not low, medium or high: {priority!r}")
            priority = priority.lower()
        cookie.priority = priority
        cookie.secure = get("secure") is True
        cookie.http_only = get("httpOnly") is True
        cookie.partitioned = get("partitioned") is True
        cookie._now = now
        return cookie

    def __repr__(self) -> str:
        return f"SessionCookie({self.to_dict()!r})"


_DESTROYED_MESSAGE = ("this session was destroyed; call session.regenerate() to start a new one "
                      "before writing to it")


class Session(dict[str, Any]):
    """One request's session: a dict of JSON-serializable data plus `id`, `cookie`, `is_new`.

    Created by SessionMiddleware or ASGISessionMiddleware; reach it with
    get_session(environ, scope or request).
    """

    __slots__ = ("_cookie", "_destroyed", "_id", "_lifecycle", "is_new")

    def __init__(self, data: Mapping[str, Any], sid: str | None, cookie: SessionCookie | None,
                 is_new: bool, lifecycle: _Lifecycle) -> None:
        if data:
            super().__init__(data)
        # A new session gets its ID and cookie when first needed: a request that never
        # uses its session (with save_uninitialized=False) costs no ID and no cookie.
        self._id = sid
        self._cookie = cookie
        self.is_new = is_new
        self._lifecycle = lifecycle
        self._destroyed = False

    @property
    def id(self) -> str:
        """The session ID."""
        if self._id is None:
            self._id = self._lifecycle.new_id()
        return self._id

    @property
    def cookie(self) -> SessionCookie:
        """The session cookie's settings and expiry."""
        if self._cookie is None:
            self._cookie = self._lifecycle.new_cookie()
        return self._cookie

    # Writes check for a destroyed session and for the reserved key "cookie".
    def _check_writable(self, key: Any = None) -> None:
        if self._destroyed:
            raise RuntimeError(_DESTROYED_MESSAGE)
        if key == "cookie":
            raise KeyError("'cookie' is reserved: use session.cookie for the cookie's settings")
        if key == "__lastAccess":
            raise KeyError("'__lastAccess' is reserved: FileStore and Node's session-file-store keep "
                           "the time of a session's last write under it")
        if key is not None and not isinstance(key, str):
            raise TypeError(f"session keys must be str (JSON object keys), not {type(key).__name__}")

    def __setitem__(self, key: str, value: Any) -> None:
        if self._destroyed or key.__class__ is not str or key == "cookie" or key == "__lastAccess":
            self._check_writable(key)  # (says why not)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self._check_writable()
        super().__delitem__(key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> Self:  # type: ignore[override,misc]
        self.update(other)
        return self

    def pop(self, key: str, *default: Any) -> Any:
        self._check_writable()
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        self._check_writable()
        return super().popitem()

    def clear(self) -> None:
        self._check_writable()
        super().clear()

    # The session methods of express-session. regenerate(), cycle_id() and destroy() delete
    # the old ID from the store at once; save() and reload() have async twins.
    def regenerate(self) -> None:
        """Destroy this session in the store and continue with a new ID, no data and a new
        cookie. Call it at login, so an ID planted before login is worthless after it."""
        lifecycle = self._lifecycle
        lifecycle.discard(None if self._destroyed else self._id, "regenerate")
        dict.clear(self)
        self._id = lifecycle.new_id()
        self._cookie = lifecycle.new_cookie()
        self.is_new = True
        self._destroyed = False
        lifecycle.id_replaced()

    def cycle_id(self) -> None:
        """Keep the data and the cookie under a new ID, and delete the old ID from the store
        (Django's cycle_key). Call it at login when the session's data must survive it; the
        framework interfaces do it by themselves when the login_key changes."""
        self._check_writable()
        lifecycle = self._lifecycle
        lifecycle.discard(self._id, "cycle_id")
        self._id = lifecycle.new_id()
        lifecycle.id_replaced()

    def destroy(self) -> None:
        """Delete the session from the store; the response expires the cookie."""
        if self._destroyed:
            return
        self._lifecycle.discard(self._id, "destroy")  # (a new session without an ID was never stored)
        dict.clear(self)
        self._destroyed = True

    def reload(self) -> None:
        """Replace the data (and cookie) with the store's copy; LookupError if it is gone."""
        self._check_writable()
        self._replace(*self._lifecycle.run(self._lifecycle.reload(self.id), "areload"))

    async def areload(self) -> None:
        """reload() for an ASGI app: awaits the store."""
        self._check_writable()
        self._replace(*await self._lifecycle.arun(self._lifecycle.reload(self.id)))

    def _replace(self, data: Mapping[str, Any], cookie: SessionCookie) -> None:
        dict.clear(self)
        dict.update(self, data)
        self._cookie = cookie

    def save(self) -> None:
        """Write the session to the store now (the end of the request then saves only new changes)."""
        self._check_writable()
        self._lifecycle.run(self._lifecycle.save_now(self), "asave")

    async def asave(self) -> None:
        """save() for an ASGI app (and a websocket's way to save before it closes): awaits the store."""
        self._check_writable()
        await self._lifecycle.arun(self._lifecycle.save_now(self))

    def destroy_other_sessions(self) -> int:
        """End the other sessions of this session's user (its store's user_key names the user):
        "log out my other devices". Returns how many ended; 0 when nobody is logged in here."""
        return self._lifecycle.run(self._lifecycle.destroy_others(self), "adestroy_other_sessions")  # type: ignore[no-any-return]

    async def adestroy_other_sessions(self) -> int:
        """destroy_other_sessions() for an ASGI app: awaits the store."""
        return await self._lifecycle.arun(self._lifecycle.destroy_others(self))  # type: ignore[no-any-return]

    def touch(self) -> None:
        """Reset the cookie's expiry to now + its original max age."""
        self._check_writable()
        self.cookie.reset_expiry()

    def flash(self, type: str | None = None, message: str | list[str] | None = None) -> Any:
        """connect-flash's req.flash, kept under the data key "flash" as a dict of lists.

        flash(type, message) appends (a str or a list of str) and returns that type's count;
        flash(type) returns and removes that type's messages; flash() returns and removes all.
        """
        store = self.get("flash")
        if not isinstance(store, dict):
            store = {}
        if type is not None and message is not None:
            messages = [message] if isinstance(message, str) else message
            if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
                raise TypeError("flash message must be a str or a list of str")
            self._check_writable()
            queue = store.get(type)
            queue = queue if isinstance(queue, list) else []
            queue.extend(messages)
            store[type] = queue
            self["flash"] = store
            return len(queue)
        if type is None:
            if "flash" in self:
                del self["flash"]
            return {name: list(queue) for name, queue in store.items() if isinstance(queue, list)}
        if type not in store:
            return []
        queue = store.pop(type)
        if store:
            self["flash"] = store
        else:
            del self["flash"]
        return list(queue) if isinstance(queue, list) else []

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, data={dict(self)!r})"


def _encode_data(session: Mapping[str, Any]) -> str:
    """The session data as JSON; a value that is not serializable is named in the error."""
    try:
        return "".join(_encode_json(session, 0))
    except (TypeError, ValueError, RecursionError):
        pass
    for key, value in session.items():
        problem = _json_problem(value)
        if problem:
            raise TypeError(f"session[{key!r}] cannot be stored: {problem}; session values "
                            "must be JSON-serializable (str, int, float, bool, None, "
                            "list, dict)") from None
    raise TypeError("session data cannot be stored as JSON")  # pragma: no cover - a key says why


def _json_problem(value: Any) -> str | None:
    """Why `value` cannot be written as JSON, or None. (Only on the error path: the fast
    encoder does not look for cycles, so a value that contains itself says so here.)"""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        if str(error).startswith("Circular reference"):
            return "it contains itself (a circular reference)"
        return str(error)
    except RecursionError:
        return "it is nested too deeply"
    return None


def _document(cookie: SessionCookie, data: Mapping[str, Any]) -> Document:
    """The stored document: the `cookie` object first, then the data, as express-session writes it."""
    document = {"cookie": cookie.to_dict()}
    document.update(data)
    return document


# ---------------------------------------------------------------------------
# Stores: the protocol, expiry shared by all, MemoryStore, FileStore, RedisStore, AsyncRedisStore,
# SQLiteStore, PostgresStore, AsyncPostgresStore
# ---------------------------------------------------------------------------

@runtime_checkable
class Store(Protocol):
    """What SessionMiddleware needs from a store. Documents are the stored JSON objects:
    the session data plus its `cookie` object.

    Optional methods a store may add, used when present:

    - ``touch(sid, session) -> bool | None``: extend the session's expiry without writing
      its data; False when the session no longer exists.
    - ``update(sid, changes, deleted, cookie, max_age) -> bool``: apply `changes` (top-level
      keys set) and `deleted` (keys removed) and the new `cookie` object onto the stored copy,
      atomically; return False, writing nothing, when the session no longer exists. With
      `cookie` None (a websocket's save) the stored cookie and expiry stay as they are.
    - the async twins ``aget``, ``aset``, ``adestroy``, ``atouch``, ``aupdate``, awaited by
      ASGISessionMiddleware when present; ``blocking = False`` to have the sync methods
      called on the event loop's thread (only for a store that never waits on anything).
    - ``all() -> dict[str, dict]``, ``length() -> int``, ``clear() -> None``.
    """

    def get(self, sid: str) -> Document | None:
        """The stored document, or None when the ID is unknown or the session expired."""

    def set(self, sid: str, session: Document, max_age: int | None = None) -> None:
        """Store the whole document; `max_age` is its remaining lifetime in ms (None: no expiry)."""

    def destroy(self, sid: str) -> None:
        """Delete the session; an unknown ID is not an error."""


def _deadline_ms(expires_ms: int | None, written_ms: float, ttl: int) -> float:
    """When a stored session expires, for every built-in store: at its cookie.expires, or,
    for a browser-session cookie, `ttl` after its last write."""
    return written_ms + ttl if expires_ms is None else expires_ms


def _check_ttl(ttl: Any, option: str = "ttl") -> int:
    ms = _millis(ttl, option)
    if ms is None or ms <= 0:
        raise ValueError(f"{option} must be a positive number of milliseconds, not {ttl!r}")
    return ms


def _check_touch_after(touch_after: Any) -> int | None:
    if touch_after is not None and (isinstance(touch_after, bool) or not isinstance(touch_after, int)
                                    or touch_after < 0):
        raise ValueError(f"touch_after must be None or milliseconds >= 0, not {touch_after!r}")
    return touch_after


def _touch_tolerance(touch_after: int | None, cookie: Any, ttl: int) -> int:
    """How little a touch may move a stored expiry without a write (the stores that write
    to move it: files, SQL): `touch_after`, by default 1% of the session's max age (or ttl)."""
    if touch_after is not None:
        return touch_after
    lifetime = cookie.get("originalMaxAge") if isinstance(cookie, dict) else None
    if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
        lifetime = ttl
    return int(lifetime) // 100


def _apply_changes(document: Document, changes: Mapping[str, Any], deleted: Iterable[str]) -> None:
    """A concurrent-safe save: only the keys this request set or deleted, onto the current copy."""
    document.update(changes)
    for key in deleted:
        document.pop(key, None)


# A user's sessions (section 13): a store given `user_key` keeps which sessions each user has,
# in the same atomic step as the save that sets, changes or removes that key. A user is the
# JSON of the key's value (so 42 and "42" are two users).
_USER_KEY = re.compile(r"[A-Za-z0-9_$-]{1,100}")


def _check_user_key(user_key: Any, store: str) -> str | None:
    if user_key is not None and (not isinstance(user_key, str) or not _USER_KEY.fullmatch(user_key)):
        raise ValueError(f"{store} user_key must be the session key whose value names the user (letters, "
                         f"digits, _, - and $, e.g. '_user_id'), or None, not {user_key!r}")
    return user_key


def _user_of(data: Mapping[str, Any], user_key: str | None) -> str | None:
    """The user a session belongs to (its user_key value as JSON), or None."""
    value = None if user_key is None else data.get(user_key)
    return None if value is None else _dumps(value)


def _no_user_index(store: Any) -> TypeError:
    return TypeError(f"{type(store).__name__} keeps no index of users' sessions: build it with user_key='_user_id' "
                     "(the session key whose value names the user: Flask-Login's '_user_id', Django's "
                     "'_auth_user_id') to use sessions_of, destroy_sessions_of and destroy_other_sessions()")


_MAX_COOKIE_SHAPES = 64
if TYPE_CHECKING:
    _MemoryEntry: TypeAlias = tuple[str, dict[str, Any], int | None, int]


class MemoryStore:
    """Sessions in this process's memory, kept as JSON text. For development and
    single-process servers: sessions are lost on restart and not shared between processes.

    `ttl` (ms) is how long a session whose cookie has no expiry lives after its last save
    or touch. Expired sessions are pruned a few at a time as new ones are stored.
    """

    blocking = False  # every call takes microseconds under a short lock: ASGI calls it on the loop

    def __init__(self, ttl: int = DAY_MS, now: Clock = time.time, *, user_key: str | None = None) -> None:
        self.ttl = _check_ttl(ttl)
        self._now = now
        self.user_key = _check_user_key(user_key, "MemoryStore")
        self._users: dict[str, set[str]] = {}    # user -> their sessions' IDs (with user_key)
        self._user_of: dict[str, str] = {}       # sid -> its user
        self._lock = threading.Lock()
        # sid -> (data JSON, cookie without expires, cookie.expires in ms, deadline ms).
        # The expiry lives beside the JSON, so a touch rewrites no text.
        self._entries: dict[str, _MemoryEntry] = {}
        # When sessions fall due, by the second: second -> the IDs whose deadline was in it
        # when they were stored (some have moved on since), and a heap of those seconds. A
        # session is pruned within a second after its deadline (and never returned after it).
        self._due: dict[int, list[str]] = {}
        self._due_seconds: list[int] = []
        # Most sessions share one cookie shape: keep one copy of each (bounded).
        self._shapes: dict[tuple[Any, ...], dict[str, Any]] = {}

    def _shape(self, cookie: Mapping[str, Any], current: dict[str, Any] | None = None,
               key: tuple[Any, ...] | None = None) -> dict[str, Any]:
        """The cookie object without its expiry: the copy kept for this shape, when there is one
        (`key`: the SessionCookie's _shape_key() when the object was made from one)."""
        shape = dict(cookie)
        shape.pop("expires", None)
        if shape == current:  # the usual touch: only the expiry moved
            shape = current
        try:
            if key is None:
                key = tuple(shape.items())
            if len(self._shapes) < _MAX_COOKIE_SHAPES or key in self._shapes:
                return self._shapes.setdefault(key, shape)
        except TypeError:  # an unhashable value: keep this one as it is
            pass
        return shape

    def _entry(self, data_json: str, cookie: SessionCookie | Mapping[str, Any], now_ms: int,
               current: dict[str, Any] | None = None) -> _MemoryEntry:
        """An entry for the data's JSON and a cookie: a stored cookie object, or the lifecycle's
        SessionCookie, whose shape, when kept already, is found by its fields (no cookie
        object written, no date formatted)."""
        if isinstance(cookie, SessionCookie):
            key: tuple[Any, ...] | None = cookie._shape_key()
            try:
                shape = self._shapes.get(key)  # type: ignore[arg-type]
            except TypeError:  # (a field holds something unhashable)
                key = shape = None
            if shape is None:
                shape = self._shape(cookie.to_dict(), current, key)
            expires = cookie._expires_ms
        else:
            expires = _cookie_expires_ms(cookie)
            shape = self._shape(cookie, current)
        return data_json, shape, expires, int(_deadline_ms(expires, now_ms, self.ttl))

    @staticmethod
    def _decode(entry: _MemoryEntry) -> Document:
        data, shape, expires, _ = entry
        cookie = _CookieObject(shape)
        cookie["expires"] = None if expires is None else _iso_ms(expires)
        cookie.expires_ms = expires
        document = _LoadedDocument()
        document["cookie"] = cookie
        document.update(_loads(data))
        document.data_json = data
        return document

    def _live(self, sid: str, now_ms: int) -> _MemoryEntry | None:
        entry = self._entries.get(sid)
        if entry is not None and entry[3] <= now_ms:
            self._drop(sid)
            return None
        return entry

    def _drop(self, sid: str) -> None:
        """Forget a session, and its place in its user's sessions."""
        del self._entries[sid]
        if self._user_of:
            self._index(sid, None)

    def _index(self, sid: str, user: str | None) -> None:
        """Record that session `sid` now belongs to `user` (None: to nobody)."""
        before = self._user_of.get(sid)
        if before == user:
            return
        if before is not None:
            sessions = self._users[before]
            sessions.discard(sid)
            if not sessions:
                del self._users[before]
            del self._user_of[sid]
        if user is not None:
            self._users.setdefault(user, set()).add(sid)
            self._user_of[sid] = user

    def _store(self, sid: str, entry: _MemoryEntry, now_ms: int) -> None:
        if sid not in self._entries:
            self._schedule(sid, entry[3])
            if self._due_seconds[0] < now_ms // 1000:  # a second's sessions are due
                self._prune(now_ms, budget=8)
        self._entries[sid] = entry

    def _schedule(self, sid: str, deadline: int) -> None:
        second = deadline // 1000
        due = self._due.get(second)
        if due is None:
            due = self._due[second] = []
            heapq.heappush(self._due_seconds, second)
        due.append(sid)

    def _prune(self, now_ms: int, budget: int | None = None) -> None:
        """Drop sessions whose deadline passed, a bounded number a call: no request pays for all."""
        seconds = self._due_seconds
        while seconds and seconds[0] < now_ms // 1000 and budget != 0:
            due = self._due[seconds[0]]
            while due and budget != 0:
                sid = due.pop()
                entry = self._entries.get(sid)
                if entry is None:
                    continue
                if entry[3] <= now_ms:
                    self._drop(sid)
                    if budget is not None:
                        budget -= 1
                else:  # touched or saved since: due at its new deadline
                    self._schedule(sid, entry[3])
            if not due:
                del self._due[heapq.heappop(seconds)]

    def get(self, sid: str) -> Document | None:
        now_ms = int(self._now() * 1000)
        with self._lock:
            entry = self._live(sid, now_ms)
        return None if entry is None else self._decode(entry)

    def set(self, sid: str, session: Document, max_age: int | None = None) -> None:
        data = dict(session)
        cookie = data.pop("cookie", None) or {}
        self._set_session(sid, _dumps(data), data, cookie)

    # The lifecycle hands MemoryStore its session as it has it, the data's JSON and the
    # SessionCookie, where any other store gets a document (see _StoreCalls.takes_sessions):
    # no document is built, no date formatted, and nothing parsed or encoded again.

    def _set_session(self, sid: str, data_json: str, data: Mapping[str, Any],
                     cookie: SessionCookie | Mapping[str, Any]) -> None:
        """set() of `data`, whose JSON is `data_json`."""
        now_ms = int(self._now() * 1000)
        entry = self._entry(data_json, cookie, now_ms)
        with self._lock:
            self._store(sid, entry, now_ms)
            if self.user_key is not None:
                self._index(sid, _user_of(data, self.user_key))

    def update(self, sid: str, changes: Mapping[str, Any], deleted: Iterable[str],
               cookie: Document | None, max_age: int | None = None) -> bool:
        if not changes and not deleted and cookie is not None:  # nothing of the data changed: a touch
            return self.touch(sid, {"cookie": cookie})
        now_ms = int(self._now() * 1000)
        with self._lock:
            entry = self._live(sid, now_ms)
            if entry is None:
                return False
            data = _loads(entry[0])
            _apply_changes(data, changes, deleted)
            data_json = _dumps(data)
            if self.user_key is not None:
                self._index(sid, _user_of(data, self.user_key))
            if cookie is None:  # the stored cookie and expiry stay as they are
                self._entries[sid] = (data_json, entry[1], entry[2], entry[3])
            else:
                self._store(sid, self._entry(data_json, cookie, now_ms, entry[1]), now_ms)
            return True

    def _update_session(self, sid: str, base_json: str, data_json: str, data: Mapping[str, Any],
                        cookie: SessionCookie) -> bool:
        """update() of a session whose data's JSON was `base_json` when loaded and is `data_json`
        now: while the stored copy is still the loaded one (nobody wrote meanwhile), the new JSON
        is stored as it is, with no keys to work out and no merge."""
        if self.user_key is None:
            now_ms = int(self._now() * 1000)
            with self._lock:
                entry = self._live(sid, now_ms)
                if entry is None:
                    return False
                if entry[0] == base_json:
                    self._store(sid, self._entry(data_json, cookie, now_ms, entry[1]), now_ms)
                    return True
        return self.update(sid, *_changed_keys(base_json, data_json, data), cookie.to_dict())

    def _touch_session(self, sid: str, cookie: SessionCookie | Mapping[str, Any]) -> bool:
        """touch() with the session's cookie."""
        now_ms = int(self._now() * 1000)
        with self._lock:
            entry = self._live(sid, now_ms)
            if entry is None:
                return False
            self._entries[sid] = self._entry(entry[0], cookie, now_ms, entry[1])
            return True

    def touch(self, sid: str, session: Document) -> bool:
        """Take the session's new cookie (its expiry); the stored data stays as it is."""
        return self._touch_session(sid, session.get("cookie") or {})

    def destroy(self, sid: str) -> None:
        with self._lock:
            if sid in self._entries:
                self._drop(sid)

    def sessions_of(self, user: Any) -> dict[str, Document]:
        """`user`'s live sessions, {sid: document} (section 13): a look at theirs only."""
        if self.user_key is None:
            raise _no_user_index(self)
        now_ms = _now_ms(self._now)
        with self._lock:
            entries = [(sid, self._live(sid, now_ms)) for sid in list(self._users.get(_dumps(user), ()))]
        return {sid: self._decode(entry) for sid, entry in entries if entry is not None}

    def destroy_sessions_of(self, user: Any, keep: str | None = None) -> int:
        """End `user`'s sessions but `keep` (a logout everywhere else); how many were live."""
        if self.user_key is None:
            raise _no_user_index(self)
        now_ms = _now_ms(self._now)
        ended = 0
        with self._lock:
            for sid in list(self._users.get(_dumps(user), ())):
                if sid != keep and self._live(sid, now_ms) is not None:
                    self._drop(sid)
                    ended += 1
        return ended

    def _live_entries(self) -> list[tuple[str, _MemoryEntry]]:
        """Every unexpired session (an administrative call: it looks at them all)."""
        now_ms = _now_ms(self._now)
        with self._lock:
            self._prune(now_ms)
            return [(sid, entry) for sid, entry in self._entries.items() if entry[3] > now_ms]

    def all(self) -> dict[str, Document]:
        return {sid: self._decode(entry) for sid, entry in self._live_entries()}

    def length(self) -> int:
        return len(self._live_entries())

    @property
    def size(self) -> int:
        """The number of live sessions."""
        return self.length()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._due.clear()
            self._due_seconds.clear()
            self._shapes.clear()
            self._users.clear()
            self._user_of.clear()


# FileStore file names: "<sid>.json"; temporary files ".<sid>.json.<written ms, hex>-<random>.tmp";
# lock files ".<sid>.json.lock" (session-file-store, which lists "*.json", never sees the others).
# A temporary file's name carries when it was started by the store's clock, so judging it
# stale needs no file time: the store has one notion of time, its clock.
_FILE_SUFFIX = ".json"
_USERS_FOLDER = ".users"       # FileStore's index of users' sessions (user_key): marker files
_TEMP_SUFFIX = ".tmp"
_LOCK_SUFFIX = ".lock"
_STALE_TEMP_MS = 600_000       # a writer takes milliseconds; ten minutes means it crashed
_REAP_BATCH = 4                # directory entries looked at per write while a reap is due
_MAX_NAME_BYTES = 255
_TEMP_TOKEN_CHARS = 21         # "<up to 12 hex digits of ms>-<8 hex>"
_MAX_SID_BYTES = _MAX_NAME_BYTES - len("." + _FILE_SUFFIX + ".") - _TEMP_TOKEN_CHARS - len(_TEMP_SUFFIX)
_PLAIN_SID = re.compile(rf"[A-Za-z0-9_-]{{1,{_MAX_SID_BYTES}}}")
_UNSAFE_SID = re.compile(r"[\x00-\x1f\x7f/\\:]")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)    # never through a symbolic link
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)    # a FIFO named as a session does not hang the open
_UTIME_FD = os.utime in os.supports_fd
_MAX_FILE_BYTES = 1 << 20   # 1 MiB: far above any real session document; more is not read


def _read_regular_file(path: str) -> bytes | None:
    """The bytes of the file at `path` if it is a regular file of at most _MAX_FILE_BYTES,
    opened without following a symbolic link; None for anything else (no file, a link, a
    directory, a FIFO, a device, a file too large or that may not be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_FILE_BYTES:
            return None
        # One read of the size fstat gave; one byte more shows whether the file grew since.
        data = os.read(fd, info.st_size + 1)
        while len(data) > info.st_size and len(data) <= _MAX_FILE_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        return data if len(data) <= _MAX_FILE_BYTES else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _make_folder(path: str) -> None:
    """Make FileStore's folder (and its parents) if missing, and check that this process can
    write in it: a wrong path fails when the store is built, not at a visitor's request."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"FileStore path {path!r} is a file, not a folder: give the folder for the "
                                 "session files (FileStore makes it if missing)") from None
    except PermissionError:
        raise PermissionError(f"FileStore cannot make its folder {path!r}: permission denied. Make it as the "
                              f"user the app runs as (mkdir -m 700 {path}), or give a folder that user may "
                              "write, such as one in the project's folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"FileStore cannot write in its folder {path!r} (it belongs to uid "
                              f"{os.stat(path).st_uid}, mode {stat.filemode(os.stat(path).st_mode)}): give the "
                              "user the app runs as write access to it (chown), or give a folder of that user's")


def _check_folder(path: str, shared_folder: bool) -> None:
    """Refuse a folder that someone else could write: another user could plant, swap or
    link session files in it (log in as someone else, or make this process write where a
    link points). A folder shared on purpose (a group of app users) says so."""
    if shared_folder or not hasattr(os, "geteuid"):
        return
    info = os.stat(path)
    if info.st_uid != os.geteuid():
        raise PermissionError(f"FileStore folder {path!r} belongs to another user (uid {info.st_uid}), who could "
                              "read, replace or link its session files. Use a folder of this user's, or pass "
                              "shared_folder=True if sharing it is deliberate.")
    if info.st_mode & 0o022:
        raise PermissionError(f"FileStore folder {path!r} is writable by its group or by others "
                              f"(mode {stat.filemode(info.st_mode)}), who could plant or swap session files. "
                              f"chmod 700 it (a umask of 002 makes folders group-writable), or pass "
                              "shared_folder=True if sharing it is deliberate.")


def _file_sid_problem(sid: Any) -> str | None:
    """Why `sid` cannot be a FileStore file name, or None when it can."""
    if not isinstance(sid, str) or not sid:
        return "a session ID must be a non-empty str"
    if _PLAIN_SID.fullmatch(sid):  # what genid makes: nothing more to check
        return None
    if _UNSAFE_SID.search(sid) or ".." in sid or sid.startswith("."):
        return "it contains a path separator, '..', a leading '.', NUL or a control character"
    try:
        encoded = sid.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if len(encoded) > _MAX_SID_BYTES:
        return f"it is longer than {_MAX_SID_BYTES} bytes"
    return None


class FileStore:
    """One JSON file a session, `<path>/<sid>.json`, as the npm package session-file-store
    writes them, so a Node app using it on the same folder shares the sessions.

    - Writes go to a temporary file in the folder, then os.replace: readers in any thread
      or process see the old document or the new one, never half of one.
    - `ttl` (ms) is the lifetime of a session whose cookie has no expiry, counted from its
      last write (`__lastAccess`).
    - `fsync=True` flushes every write to disk before the rename (durable across power
      loss, slower); by default the OS writes it back in its own time.
    - `touch_after` (ms): a touch that would move the expiry by less than this rewrites
      nothing. None (default) means 1% of the session's max age (or of `ttl`); 0 rewrites
      on every touch.
    - Expired files and temporary files left by a crashed writer are removed a few at a
      time as sessions are written, in a pass through the folder every `reap_interval`
      (ms; the first one interval after the store is created), and by reap(). Nothing but
      this store's files is ever deleted (see _deletable).
    - The folder must be this user's and not writable by others, unless `shared_folder`
      says the sharing is deliberate. Files are opened without following symbolic links,
      only regular files are read, and at most _MAX_FILE_BYTES of one.
    """

    def __init__(self, path: str | os.PathLike[str] = "./sessions", ttl: int = DAY_MS, *,
                 fsync: bool = False, touch_after: int | None = None, reap_interval: int = 3_600_000,
                 shared_folder: bool = False, user_key: str | None = None, now: Clock = time.time) -> None:
        self.path = os.fspath(path)
        self.ttl = _check_ttl(ttl)
        self.user_key = _check_user_key(user_key, "FileStore")
        self.fsync = bool(fsync)
        self.touch_after = _check_touch_after(touch_after)
        self.reap_interval = _check_ttl(reap_interval, "reap_interval")
        self._now = now
        self.shared_folder = _require_bool(shared_folder, "shared_folder")
        _make_folder(self.path)
        _check_folder(self.path, self.shared_folder)
        self._prefix = os.path.join(self.path, "")
        # flock serialises writers across threads and processes. Where it does not exist
        # (Windows) this lock stands in for it within the process; beside flock it is a no-op.
        self._flock_substitute: Any = _NoLock() if fcntl is not None else threading.RLock()
        self._reap_lock = threading.Lock()
        self._reap_entries: Any = None   # an open os.scandir() while a pass is under way
        self._reap_pid = os.getpid()
        # As session-file-store: the first pass one interval after the store starts.
        self._reap_due = _now_ms(now) + self.reap_interval

    # -- files ---------------------------------------------------------------

    # A user's sessions: an empty marker file a session, `.users/<hash of the user>/<sid>`, made
    # before the session file says so and removed after it no longer does, so a listing (which
    # reads each session to confirm) misses none; stale markers go at reap(). session-file-store
    # lists "*.json" only: it never sees them.
    def _user_folder(self, user: str) -> str:
        return os.path.join(self.path, _USERS_FOLDER, hashlib.sha256(user.encode("utf-8")).hexdigest()[:32])

    def _mark(self, sid: str, user: str | None) -> None:
        if user is None:
            return
        folder = self._user_folder(user)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.close(os.open(os.path.join(folder, sid), os.O_WRONLY | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600))

    def _unmark(self, sid: str, user: str | None) -> None:
        if user is not None:
            _unlink_quietly(os.path.join(self._user_folder(user), sid))

    def _file(self, sid: str) -> str:
        return self._prefix + sid + _FILE_SUFFIX

    def _lock_file(self, sid: str) -> str:
        return self._prefix + "." + sid + _FILE_SUFFIX + _LOCK_SUFFIX

    def _checked_file(self, sid: str) -> str:
        problem = _file_sid_problem(sid)
        if problem:
            raise ValueError(f"FileStore refuses session ID {sid!r} as a file name: {problem}")
        return self._file(sid)

    def _write(self, path: str, document: Document, now_ms: int, last_access_ms: int | None = None) -> None:
        """Write atomically: a uniquely named temporary file, then rename over the target.
        `__lastAccess` and the file's mtime are `last_access_ms` (default: now, by the
        store's clock, so the touch tolerance compares the store's clock with itself)."""
        written_ms = now_ms if last_access_ms is None else last_access_ms
        document["__lastAccess"] = written_ms
        data = _dumps(document).encode("utf-8")
        if len(data) > _MAX_FILE_BYTES:
            raise ValueError(f"the session stored as {path!r} would be {len(data)} bytes, over FileStore's limit "
                             f"of {_MAX_FILE_BYTES}; keep large data elsewhere and its key in the session")
        folder, name = os.path.split(path)
        temp = os.path.join(folder, f".{name}.{now_ms:x}-{_secrets.token_hex(4)}{_TEMP_SUFFIX}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                written_ns = written_ms * 1_000_000
                os.utime(fd if _UTIME_FD else temp, ns=(written_ns, written_ns))
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise

    @staticmethod
    def _read(path: str) -> Document | None:
        data = _read_regular_file(path)
        return None if data is None else _loads_document(data)

    def _expired(self, document: Document, now_ms: int) -> bool:
        """cookie.expires decides; a session without one lives `ttl` after its last write.
        A document that is not a session (no cookie object, a bad date) counts as expired."""
        if not isinstance(document.get("cookie"), dict):
            return True
        try:
            expires = _document_expires_ms(document)
        except ValueError:
            return True
        last = document.get("__lastAccess")
        if last.__class__ not in (int, float) or not 0 <= last <= _MAX_EXPIRES_MS:
            if expires is None:
                return True  # no expiry and no (believable) record of its last write
            last = 0
        return _deadline_ms(expires, last, self.ttl) <= now_ms

    @contextmanager
    def _locked(self, sid: str, wait: bool = True) -> Iterator[bool]:
        """Hold the session's lock: an exclusive flock on its lock file. Yields False, holding
        nothing, when wait=False and another writer has it.

        Every writer of an existing session (update, touch, destroy, reap) holds it, so a
        read-modify-write is atomic across threads and processes, and sessions don't wait
        for each other. A lock file is removed (under its lock) with its session; so after
        waiting we check that the file we locked is still the one at its path, and if not,
        start over with the current one.
        """
        lock_path = self._lock_file(sid)
        with self._flock_substitute:
            for _ in range(1000):
                fd = _open_lock_file(lock_path)
                try:
                    if not _lock_fd(fd, wait):
                        yield False
                        return
                    try:
                        current = os.stat(lock_path)
                    except FileNotFoundError:
                        continue
                    opened = os.fstat(fd)
                    if (current.st_ino, current.st_dev) == (opened.st_ino, opened.st_dev):
                        yield True
                        return
                finally:
                    os.close(fd)  # closing releases the lock
        raise OSError(errno.EAGAIN, f"could not lock {lock_path}: it keeps being replaced")

    def _remove(self, sid: str) -> int:
        """Delete a session's file and its lock file; call it holding the lock."""
        removed = _unlink_quietly(self._file(sid))
        _unlink_quietly(self._lock_file(sid))
        return removed

    # -- the store interface -------------------------------------------------

    def get(self, sid: str) -> Document | None:
        if _file_sid_problem(sid):
            return None
        document = self._read(self._file(sid))
        # An expired file is not deleted here: another process may be rewriting it right
        # now. reap() deletes it after checking again under the lock.
        if document is None or self._expired(document, _now_ms(self._now)):
            return None
        document.pop("__lastAccess", None)
        return document

    def set(self, sid: str, session: Document, max_age: int | None = None) -> None:
        path = self._checked_file(sid)
        now_ms = _now_ms(self._now)
        if self.user_key is None:
            self._write(path, dict(session), now_ms)
        else:   # (under the lock, so destroy_sessions_of never sees the marker without the file)
            with self._locked(sid):
                self._mark(sid, _user_of(session, self.user_key))
                self._write(path, dict(session), now_ms)
        self._reap_step(now_ms)

    def update(self, sid: str, changes: Mapping[str, Any], deleted: Iterable[str],
               cookie: Document | None, max_age: int | None = None) -> bool:
        path = self._checked_file(sid)
        if not changes and not deleted and cookie is not None:  # nothing of the data changed: a touch
            return self.touch(sid, {"cookie": cookie})
        now_ms = _now_ms(self._now)
        with self._locked(sid):
            document = self._live_document_or_drop_lock(sid)
            if document is None:
                return False
            last_access = None
            if cookie is None:  # the stored cookie and expiry stay, __lastAccess included
                last = document.get("__lastAccess")
                last_access = last if last.__class__ is int else None
            else:
                document["cookie"] = cookie
            before = _user_of(document, self.user_key)
            _apply_changes(document, changes, deleted)
            after = _user_of(document, self.user_key)
            if after != before:
                self._mark(sid, after)
            self._write(path, document, now_ms, last_access)
            if after != before:
                self._unmark(sid, before)
        self._reap_step(now_ms)
        return True

    def _live_document_or_drop_lock(self, sid: str) -> Document | None:
        """Under the session's lock: its live document, or None (and no lock file left)."""
        document = self._read(self._file(sid))
        if document is None or self._expired(document, _now_ms(self._now)):
            _unlink_quietly(self._lock_file(sid))
            return None
        return document

    def touch(self, sid: str, session: Document) -> bool:
        """Move the session's expiry (cookie and `__lastAccess`) without touching its data.

        The file is rewritten only when its last write is older than the tolerance
        (`touch_after`): a read-only request then costs a stat, not a write.
        """
        now_ms = _now_ms(self._now)
        due = self._touch_due(sid, session, now_ms)
        return due is False or (due is True and self._rewrite_cookie(sid, session, now_ms))

    def _touch_due(self, sid: str, session: Document, now_ms: int) -> bool | None:
        """Must touch() rewrite the file? None: there is no such session file."""
        if _file_sid_problem(sid):
            return None
        try:
            written_ms = os.stat(self._file(sid)).st_mtime * 1000
        except FileNotFoundError:
            return None
        return now_ms - written_ms >= _touch_tolerance(self.touch_after, session.get("cookie"), self.ttl)

    def _rewrite_cookie(self, sid: str, session: Document, now_ms: int) -> bool:
        with self._locked(sid):
            document = self._live_document_or_drop_lock(sid)
            if document is None:
                return False
            document["cookie"] = session.get("cookie", document.get("cookie"))
            self._write(self._file(sid), document, now_ms)
        self._reap_step(now_ms)
        return True

    # From an event loop (ASGISessionMiddleware): reading a small file from the page cache
    # takes microseconds, a hop to a worker thread tens of them, so get() and the stat of a
    # touch run inline; whatever writes or waits for a lock runs on a worker thread.
    async def aget(self, sid: str) -> Any:
        return self.get(sid)

    async def atouch(self, sid: str, session: Document) -> bool:
        now_ms = _now_ms(self._now)
        due = self._touch_due(sid, session, now_ms)
        if due is not True:
            return due is False
        return await asyncio.get_running_loop().run_in_executor(None, self._rewrite_cookie, sid, session, now_ms)

    def destroy(self, sid: str) -> None:
        if _file_sid_problem(sid):
            return
        with self._locked(sid):
            document = self._read(self._file(sid)) if self.user_key is not None else None
            self._remove(sid)
            if document is not None:
                self._unmark(sid, _user_of(document, self.user_key))

    def _user_sessions(self, user: Any) -> tuple[str, list[str]]:
        """(the user's JSON, the IDs marked as theirs); a store without user_key refuses."""
        if self.user_key is None:
            raise _no_user_index(self)
        user_json = _dumps(user)
        try:
            names = os.listdir(self._user_folder(user_json))
        except FileNotFoundError:
            names = []
        return user_json, [name for name in names if not _file_sid_problem(name)]

    def sessions_of(self, user: Any) -> dict[str, Document]:
        """`user`'s live sessions, {sid: document} (section 13): reads theirs only."""
        user_json, sids = self._user_sessions(user)
        sessions = {}
        for sid in sids:
            document = self.get(sid)
            if document is not None and _user_of(document, self.user_key) == user_json:
                sessions[sid] = document
        return sessions

    def destroy_sessions_of(self, user: Any, keep: str | None = None) -> int:
        """End `user`'s sessions but `keep`, each under its lock; how many were live."""
        user_json, sids = self._user_sessions(user)
        ended = 0
        for sid in sids:
            if sid == keep:
                continue
            with self._locked(sid):
                document = self._live_document_or_drop_lock(sid)
                if document is not None and _user_of(document, self.user_key) == user_json:
                    self._remove(sid)
                    ended += 1
                self._unmark(sid, user_json)   # (ended, gone, or someone else's now)
        return ended

    # -- listing and cleaning -----------------------------------------------

    def _session_ids(self) -> Iterator[str]:
        with os.scandir(self.path) as entries:
            for entry in entries:
                sid = self._sid_of(entry.name)
                if sid is not None:
                    yield sid

    @staticmethod
    def _sid_of(name: str) -> str | None:
        if not name.endswith(_FILE_SUFFIX):
            return None
        sid = name[:-len(_FILE_SUFFIX)]
        return None if _file_sid_problem(sid) else sid

    def all(self) -> dict[str, Document]:
        sessions = {}
        for sid in self._session_ids():
            document = self.get(sid)
            if document is not None:
                sessions[sid] = document
        return sessions

    def length(self) -> int:
        return len(self.all())

    @staticmethod
    def _temp_started_ms(name: str) -> int | None:
        """When this store started the temporary file called `name` (by its clock, from the
        name), or None if the name is not one of its temporary files."""
        if not name.startswith(".") or not name.endswith(_TEMP_SUFFIX):
            return None
        sid_part, dot_json, token = name[1:-len(_TEMP_SUFFIX)].rpartition(_FILE_SUFFIX + ".")
        started, dash, random_part = token.partition("-")
        if not dot_json or not dash or len(random_part) != 8 or _file_sid_problem(sid_part):
            return None
        try:
            return int(started, 16)
        except ValueError:
            return None

    @staticmethod
    def _sid_of_lock_file(name: str) -> str | None:
        """The session ID of a lock file's name, or None if it is not one of ours."""
        if not name.startswith(".") or not name.endswith(_FILE_SUFFIX + _LOCK_SUFFIX):
            return None
        sid = name[1:-len(_FILE_SUFFIX + _LOCK_SUFFIX)]
        return None if _file_sid_problem(sid) else sid

    def clear(self) -> None:
        """Delete every session of this store (with its lock file), its stale temporary
        files and its users' markers; nothing else (see _may_delete)."""
        self._delete_all(expired_only=False)
        shutil.rmtree(os.path.join(self.path, _USERS_FOLDER), ignore_errors=True)

    def reap(self) -> int:
        """Delete expired session files, torn ones, orphaned lock files, stale temporary
        files (see _may_delete) and stale user markers; return how many session and
        temporary files went."""
        removed = self._delete_all(expired_only=True)
        self._reap_markers()
        return removed

    def _reap_markers(self) -> None:
        """Remove the markers of sessions that are gone or belong to someone else now."""
        users = os.path.join(self.path, _USERS_FOLDER)
        try:
            folders = os.listdir(users)
        except FileNotFoundError:
            return
        for folder in folders:
            path = os.path.join(users, folder)
            try:
                sids = os.listdir(path)
            except OSError:
                continue
            for sid in sids:
                if _file_sid_problem(sid):
                    continue
                with self._locked(sid, wait=False) as held:
                    if not held:
                        continue
                    document = self._read(self._file(sid))
                    user = None if document is None else _user_of(document, self.user_key)
                    if user is None or self._user_folder(user) != path:
                        _unlink_quietly(os.path.join(path, sid))
                    if document is None:
                        _unlink_quietly(self._lock_file(sid))
            with suppress(OSError):
                os.rmdir(path)   # (only when empty)

    def _delete_all(self, expired_only: bool) -> int:
        now_ms = _now_ms(self._now)
        with os.scandir(self.path) as entries:
            names = [entry.name for entry in entries]
        return sum(self._delete_if_allowed(name, now_ms, expired_only) for name in names)

    def _verdict(self, sid: str, now_ms: int) -> str:
        """What the file of session `sid` is: "live", "expired", "absent", "torn" (it does not
        parse and was last written longer than `ttl` ago: a write torn by a crash), or
        "foreign": anything else (a folder, a link, a file too large, JSON that is not a
        session document, a recent file that does not parse)."""
        path = self._file(sid)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return "absent"
        if not stat.S_ISREG(info.st_mode):
            return "foreign"
        data = _read_regular_file(path)
        if data is None:
            return "foreign"
        try:
            document = _loads(data.decode("utf-8"))
        except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
            return "torn" if info.st_mtime * 1000 + self.ttl <= now_ms else "foreign"
        if not isinstance(document, dict) or not isinstance(document.get("cookie"), dict):
            return "foreign"
        return "expired" if self._expired(document, now_ms) else "live"

    def _may_delete(self, name: str, now_ms: int, expired_only: bool) -> bool:
        """What reap() (expired_only) and clear() may delete, and nothing else: this store's
        temporary files once stale; session files (a valid ID's name) that are torn, or
        expired (reap) or live (clear); lock files whose session is not live (reap) or any
        (clear). Never another application's JSON, a folder, a link, a file too large."""
        started_ms = self._temp_started_ms(name)
        if started_ms is not None:
            return started_ms + _STALE_TEMP_MS <= now_ms
        sid = self._sid_of(name)
        if sid is not None:
            verdict = self._verdict(sid, now_ms)
            return verdict in ("expired", "torn") or (verdict == "live" and not expired_only)
        sid = self._sid_of_lock_file(name)
        return sid is not None and (not expired_only or self._verdict(sid, now_ms) != "live")

    def _delete_if_allowed(self, name: str, now_ms: int, expired_only: bool) -> int:
        """Delete the folder entry `name` if _may_delete says so; an error on it is logged
        and skipped, so reaping never fails the request it runs in."""
        try:
            if not self._may_delete(name, now_ms, expired_only):
                return 0
            sid = self._sid_of(name)
            lock_sid = None if sid is not None else self._sid_of_lock_file(name)
            if sid is None and lock_sid is None:  # a stale temporary file
                return _unlink_quietly(self._prefix + name)
            # Judge again under the session's lock: it may have been rewritten meanwhile. A
            # reap never waits for it: a writer holding it is not done with the session.
            with self._locked(sid or str(lock_sid), wait=not expired_only) as held:
                if not held or not self._may_delete(name, now_ms, expired_only):
                    return 0
                if sid is not None:
                    return self._remove(sid)
                _unlink_quietly(self._prefix + name)
                return 0
        except OSError as error:
            log.warning("bunway_session: FileStore skipped %r while cleaning its folder: %s", name, error)
            return 0

    def _reap_step(self, now_ms: int) -> None:
        """Reap a few directory entries per write while a reap is due: amortised, no thread."""
        if self._reap_entries is None and now_ms < self._reap_due:
            return
        if not self._reap_lock.acquire(blocking=False):
            return
        try:
            if self._reap_pid != os.getpid():  # a forked child starts its own walk
                self._reap_entries, self._reap_pid = None, os.getpid()
            if self._reap_entries is None:
                if now_ms < self._reap_due:
                    return
                self._reap_entries = os.scandir(self.path)
            for _ in range(_REAP_BATCH):
                entry = next(self._reap_entries, None)
                if entry is None:
                    self._reap_entries = None
                    self._reap_due = now_ms + self.reap_interval
                    return
                self._delete_if_allowed(entry.name, now_ms, expired_only=True)
        except Exception:  # a visitor's request is never failed by reaping
            log.exception("bunway_session: FileStore's reaping failed; it starts over at the next pass")
            if self._reap_entries is not None:
                self._reap_entries.close()
            self._reap_entries = None
            self._reap_due = now_ms + self.reap_interval
        finally:
            self._reap_lock.release()


def _open_lock_file(path: str) -> int:
    """Open (or make) a lock file, never through a symbolic link and only as a regular file:
    a planted link must not make this process create or lock a file elsewhere."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(error.errno, f"FileStore lock file {path!r} is a symbolic link; FileStore never "
                                       "follows one: remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"FileStore lock file {path!r} is not a regular file: remove it")
    return fd


def _lock_fd(fd: int, wait: bool) -> bool:
    """flock the file; False when wait=False and another holder has it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _unlink_quietly(path: str) -> int:
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0


_REDIS_INDEX = "bunway-users:"   # + prefix + a user's JSON: the set of that user's session IDs


class _RedisFormat:
    """What RedisStore and AsyncRedisStore share, without I/O: keys, values and TTLs as the
    npm package connect-redis (7) writes them: key `<prefix><sid>`, value the document as
    JSON, TTL from cookie.expires (else `ttl`) in whole seconds rounded up."""

    _client_example = "redis.Redis.from_url('redis://localhost:6379/0')"
    _asynchronous = False
    _wrong_client = ("RedisStore needs a sync client (redis.Redis); this one is asyncio's (redis.asyncio.Redis), "
                     "whose calls RedisStore would never await, so nothing would be stored: use "
                     "AsyncRedisStore(client) (with ASGISessionMiddleware or QuartSessionInterface)")

    def __init__(self, client: Any, prefix: str = "sess:", ttl: int = DAY_MS,
                 now: Clock = time.time, *, user_key: str | None = None) -> None:
        store = type(self).__name__
        if client is None:
            raise TypeError(f"{store} needs a client, e.g. {self._client_example}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if not prefix:
            raise ValueError(f"{store} prefix must not be empty: its clear() deletes every key that starts "
                             "with the prefix, which would be the whole database")
        asynchronous = inspect.iscoroutinefunction(getattr(client, "execute_command", None)
                                                   or getattr(client, "get", None))
        if asynchronous != self._asynchronous:
            raise TypeError(self._wrong_client)
        self.client = client
        self.prefix = prefix
        self.ttl = _check_ttl(ttl)
        self._now = now
        self.user_key = _check_user_key(user_key, store)
        # A user's sessions: a set of IDs a user, outside the prefix (connect-redis's all() and
        # length() scan the prefix), kept alive as long as its longest-lived session.
        self._index_prefix = _REDIS_INDEX + prefix
        if self.user_key is not None and self._index_prefix.startswith(prefix):
            raise ValueError(f"{store} prefix {prefix!r} would cover its index of users' sessions "
                             f"({self._index_prefix!r}...): choose one that ends in ':', such as 'sess:'")

    def _key(self, sid: str) -> str:
        return self.prefix + sid

    def _index(self, user: str) -> str:
        return self._index_prefix + user

    def _user_index(self, user: Any) -> tuple[str, str]:
        """(the user's JSON, their index key); a store without user_key refuses."""
        if self.user_key is None:
            raise _no_user_index(self)
        user_json = _dumps(user)
        return user_json, self._index(user_json)

    def _queue_index_expiry(self, pipe: Any, user: str, seconds: int) -> None:
        """Keep the user's index as long as its longest-lived session (Redis 7: NX, then GT). A
        TTL, as the sessions' own, so Redis's clock decides, never a moment of this one's."""
        pipe.expire(self._index(user), seconds, nx=True)
        pipe.expire(self._index(user), seconds, gt=True)

    def _mine(self, raw: Any, sid: str, user: str) -> bool:
        document = None if raw is None else self._document(self._key(sid), raw)
        return document is not None and _user_of(document, self.user_key) == user

    def _ttl_seconds(self, document: Mapping[str, Any]) -> int:
        # connect-redis: whole seconds, rounded up.
        now_ms = _now_ms(self._now)
        return math.ceil((_deadline_ms(_document_expires_ms(document), now_ms, self.ttl) - now_ms) / 1000)

    def _document(self, key: str, raw: Any) -> Document | None:
        """The stored document, or None (and a warning naming the key) if the value is not one."""
        document = _loads_document(raw)
        if document is None:
            log.warning("bunway_session: Redis key %r does not hold a session document; it counts as no "
                        "session (is another application using the prefix %r?)", key, self.prefix)
        return document

    def _merged(self, key: str, raw: Any, changes: Mapping[str, Any], deleted: Iterable[str],
                cookie: Document | None) -> tuple[str, int | None, str | None, str | None] | None:
        """update's new value, TTL in seconds (None: keep the key's TTL, for an update that
        leaves the cookie as stored), and the session's user before and after; None when
        there is no session to update."""
        document = None if raw is None else self._document(key, raw)
        if document is None:
            return None
        before = _user_of(document, self.user_key)
        if cookie is not None:
            document["cookie"] = cookie
        _apply_changes(document, changes, deleted)
        return (_dumps(document), (None if cookie is None else self._ttl_seconds(document)), before,
                _user_of(document, self.user_key))

    def _queue_write(self, pipe: Any, sid: str, value: str, seconds: int | None,
                     before: str | None = None, after: str | None = None) -> bool:
        """Queue a write after MULTI (queuing does no I/O, in either client): the value with its
        TTL, keeping the key's TTL (seconds None), or a delete for a session already expired;
        and its move between users' indexes. True when the session still exists after it."""
        key = self._key(sid)
        if seconds is None:
            pipe.set(key, value, keepttl=True)
        elif seconds <= 0:
            pipe.delete(key)
        else:
            pipe.set(key, value, ex=seconds)
        exists = seconds is None or seconds > 0
        if before is not None and before != after:
            pipe.srem(self._index(before), sid)
        if after is not None and exists:
            if after != before:
                pipe.sadd(self._index(after), sid)
            self._queue_index_expiry(pipe, after, self._ttl_seconds(_loads(value)) if seconds is None else seconds)
        return exists

    def _match(self) -> str:
        """The SCAN pattern of this store's keys: the prefix, its glob characters escaped."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "*"

    def _sessions(self, keys: Sequence[Any], values: Sequence[Any]) -> Iterator[tuple[str, Document]]:
        """all()'s (session ID, document) pairs of a batch of keys and their values; a key that
        is not UTF-8 (not one of ours: session IDs are text) or a value that is no session is
        left out."""
        for key, raw in zip(keys, values):
            try:
                name = key.decode("utf-8") if isinstance(key, bytes) else str(key)
            except UnicodeDecodeError:
                continue
            document = None if raw is None else self._document(name, raw)
            if document is not None:
                yield name[len(self.prefix):], document


_REDIS_RETRIES = 100   # optimistic transactions: attempts before giving up on a key that keeps changing


def _texts(members: Iterable[Any]) -> list[str]:
    """Redis set members as session IDs (what is not UTF-8 is not one of ours)."""
    texts = []
    for member in members:
        try:
            texts.append(member.decode("utf-8") if isinstance(member, bytes) else str(member))
        except UnicodeDecodeError:
            continue
    return texts


class RedisStore(_RedisFormat):
    """Sessions in Redis, as the npm package connect-redis (7) keeps them: key
    `<prefix><sid>`, value the document as JSON, TTL from cookie.expires (else `ttl`).

    `client` is a redis-py ``Redis`` or anything with its methods (get, set, delete,
    expire, scan_iter, mget, pipeline); this module imports nothing of redis.
    """

    def get(self, sid: str) -> Document | None:
        key = self._key(sid)
        raw = self.client.get(key)
        return None if raw is None else self._document(key, raw)

    def set(self, sid: str, session: Document, max_age: int | None = None) -> None:
        seconds = self._ttl_seconds(session)
        user = _user_of(session, self.user_key)
        if user is None:
            if seconds <= 0:
                self.client.delete(self._key(sid))
                return
            self.client.set(self._key(sid), _dumps(session), ex=seconds)
            return
        with self.client.pipeline() as pipe:   # MULTI: the session and its place in its user's index
            self._queue_write(pipe, sid, _dumps(session), seconds, None, user)
            pipe.execute()

    def touch(self, sid: str, session: Document) -> bool:
        """Extend the key's TTL only: the data in Redis stays as it is."""
        seconds = self._ttl_seconds(session)
        if seconds <= 0:
            self.client.delete(self._key(sid))
            return False
        user = _user_of(session, self.user_key)
        if user is None:
            return bool(self.client.expire(self._key(sid), seconds))
        with self.client.pipeline() as pipe:
            pipe.expire(self._key(sid), seconds)
            self._queue_index_expiry(pipe, user, seconds)
            return bool(pipe.execute()[0])

    def update(self, sid: str, changes: Mapping[str, Any], deleted: Iterable[str],
               cookie: Document | None, max_age: int | None = None) -> bool:
        """Optimistic transaction: WATCH the key, merge onto its current value, MULTI/EXEC;
        start over if another client wrote the key in between. `cookie` None keeps the
        stored cookie and the key's TTL."""
        if not changes and not deleted and cookie is not None and self.user_key is None:
            return self.touch(sid, {"cookie": cookie})   # nothing of the data changed: a touch
        key = self._key(sid)
        deleted = list(deleted)
        for _ in range(_REDIS_RETRIES):
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    merged = self._merged(key, pipe.get(key), changes, deleted, cookie)
                    if merged is None:
                        return False
                    pipe.multi()
                    exists = self._queue_write(pipe, sid, *merged)
                    pipe.execute()
                    return exists
                except Exception as exc:
                    if type(exc).__name__ != "WatchError":   # (another client wrote the key: again)
                        raise
        raise RuntimeError(f"could not update {key!r}: it kept changing under {_REDIS_RETRIES} attempts")

    def destroy(self, sid: str) -> None:
        self.client.delete(self._key(sid))   # (its index entry goes when its user's sessions are read)

    def sessions_of(self, user: Any) -> dict[str, Document]:
        """`user`'s live sessions, {sid: document} (section 13): their index, then their values."""
        user_json, index = self._user_index(user)
        sids = _texts(self.client.smembers(index))
        sessions = {}
        for sid, raw in zip(sids, self.client.mget([self._key(sid) for sid in sids]) if sids else []):
            if self._mine(raw, sid, user_json):
                sessions[sid] = self._document(self._key(sid), raw)
            else:
                self._end(sid, user_json, index, delete=False)
        return sessions  # type: ignore[return-value]

    def destroy_sessions_of(self, user: Any, keep: str | None = None) -> int:
        """End `user`'s sessions but `keep`, each in a transaction that checks it is still theirs."""
        user_json, index = self._user_index(user)
        return sum(self._end(sid, user_json, index, delete=True)
                   for sid in _texts(self.client.smembers(index)) if sid != keep)

    def _end(self, sid: str, user: str, index: str, delete: bool) -> bool:
        """WATCH the session: if it is still the user's, delete it (delete=True); if not (gone,
        or someone else's now), drop it from the user's index. True when it was deleted."""
        key = self._key(sid)
        for _ in range(_REDIS_RETRIES):
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    mine = self._mine(pipe.get(key), sid, user)
                    if mine and not delete:
                        return False
                    pipe.multi()
                    if mine:
                        pipe.delete(key)
                    pipe.srem(index, sid)
                    pipe.execute()
                    return mine
                except Exception as exc:
                    if type(exc).__name__ != "WatchError":
                        raise
        return False

    def _keys(self) -> list[Any]:
        return list(self.client.scan_iter(match=self._match(), count=100))

    def all(self) -> dict[str, Document]:
        keys = self._keys()
        sessions: dict[str, Document] = {}
        for start in range(0, len(keys), 100):
            batch = keys[start:start + 100]
            sessions.update(self._sessions(batch, self.client.mget(batch)))
        return sessions

    def length(self) -> int:
        return len(self._keys())

    def clear(self) -> None:
        keys = self._keys()
        for start in range(0, len(keys), 100):
            self.client.delete(*keys[start:start + 100])


class AsyncRedisStore(_RedisFormat):
    """RedisStore for a redis.asyncio client, for ASGISessionMiddleware: the same keys,
    values and TTLs (connect-redis compatible) and the same guarantees, awaited on the
    event loop. Its methods are the async twins (aget, aset, adestroy, atouch, aupdate)
    and async all(), length() and clear(); SessionMiddleware (WSGI) cannot use it.
    """

    _client_example = "redis.asyncio.Redis.from_url('redis://localhost:6379/0')"
    _asynchronous = True
    _wrong_client = ("AsyncRedisStore needs an asyncio client (redis.asyncio.Redis); this one is sync "
                     "(redis.Redis): use RedisStore(client), or redis.asyncio.Redis.from_url(...)")
    _sync_twin = "RedisStore"

    async def aget(self, sid: str) -> Any:
        key = self._key(sid)
        raw = await self.client.get(key)
        return None if raw is None else self._document(key, raw)

    async def aset(self, sid: str, session: Document, max_age: int | None = None) -> None:
        seconds = self._ttl_seconds(session)
        user = _user_of(session, self.user_key)
        if user is None:
            if seconds <= 0:
                await self.client.delete(self._key(sid))
                return
            await self.client.set(self._key(sid), _dumps(session), ex=seconds)
            return
        async with self.client.pipeline() as pipe:
            self._queue_write(pipe, sid, _dumps(session), seconds, None, user)
            await pipe.execute()

    async def atouch(self, sid: str, session: Document) -> bool:
        """Extend the key's TTL only: the data in Redis stays as it is."""
        seconds = self._ttl_seconds(session)
        if seconds <= 0:
            await self.client.delete(self._key(sid))
            return False
        user = _user_of(session, self.user_key)
        if user is None:
            return bool(await self.client.expire(self._key(sid), seconds))
        async with self.client.pipeline() as pipe:
            pipe.expire(self._key(sid), seconds)
            self._queue_index_expiry(pipe, user, seconds)
            return bool((await pipe.execute())[0])

    async def aupdate(self, sid: str, changes: Mapping[str, Any], deleted: Iterable[str],
                      cookie: Document | None, max_age: int | None = None) -> bool:
        """RedisStore.update, awaited: WATCH, merge, MULTI/EXEC, start over on a conflict."""
        if not changes and not deleted and cookie is not None and self.user_key is None:
            return await self.atouch(sid, {"cookie": cookie})   # nothing of the data changed: a touch
        key = self._key(sid)
        deleted = list(deleted)
        for _ in range(_REDIS_RETRIES):
            async with self.client.pipeline() as pipe:
                try:
                    await pipe.watch(key)
                    merged = self._merged(key, await pipe.get(key), changes, deleted, cookie)
                    if merged is None:
                        return False
                    pipe.multi()
                    exists = self._queue_write(pipe, sid, *merged)
                    await pipe.execute()
                    return exists
                except Exception as exc:
                    if type(exc).__name__ != "WatchError":   # (another client wrote the key: again)
                        raise
        raise RuntimeError(f"could not update {key!r}: it kept changing under {_REDIS_RETRIES} attempts")

    async def adestroy(self, sid: str) -> None:
        await self.client.delete(self._key(sid))

    async def asessions_of(self, user: Any) -> dict[str, Document]:
        """RedisStore.sessions_of, awaited."""
        user_json, index = self._user_index(user)
        sids = _texts(await self.client.smembers(index))
        sessions = {}
        for sid, raw in zip(sids, await self.client.mget([self._key(sid) for sid in sids]) if sids else []):
            if self._mine(raw, sid, user_json):
                sessions[sid] = self._document(self._key(sid), raw)
            else:
                await self._aend(sid, user_json, index, delete=False)
        return sessions  # type: ignore[return-value]

    async def adestroy_sessions_of(self, user: Any, keep: str | None = None) -> int:
        """RedisStore.destroy_sessions_of, awaited."""
        user_json, index = self._user_index(user)
        ended = 0
        for sid in _texts(await self.client.smembers(index)):
            if sid != keep:
                ended += await self._aend(sid, user_json, index, delete=True)
        return ended

    async def _aend(self, sid: str, user: str, index: str, delete: bool) -> bool:
        """RedisStore._end, awaited."""
        key = self._key(sid)
        for _ in range(_REDIS_RETRIES):
            async with self.client.pipeline() as pipe:
                try:
                    await pipe.watch(key)
                    mine = self._mine(await pipe.get(key), sid, user)
                    if mine and not delete:
                        return False
                    pipe.multi()
                    if mine:
                        pipe.delete(key)
                    pipe.srem(index, sid)
                    await pipe.execute()
                    return mine
                except Exception as exc:
                    if type(exc).__name__ != "WatchError":
                        raise
        return False

    async def _keys(self) -> list[Any]:
        return [key async for key in self.client.scan_iter(match=self._match(), count=100)]

    async def all(self) -> dict[str, Document]:
        keys = await self._keys()
        sessions: dict[str, Document] = {}
        for start in range(0, len(keys), 100):
            batch = keys[start:start + 100]
            sessions.update(self._sessions(batch, await self.client.mget(batch)))
        return sessions

    async def length(self) -> int:
        return len(await self._keys())

    async def clear(self) -> None:
        keys = await self._keys()
        for start in range(0, len(keys), 100):
            await self.client.delete(*keys[start:start + 100])


# SQL stores. Each operation is written once, as steps that yield statements (sql, parameters,
# what to return: "one" row, "all" rows, or the "count" of rows changed) and receive their
# results; a driver runs them on a connection: sqlite3's, a psycopg pool's, or awaited on an
# async pool's. So SQLiteStore, PostgresStore and AsyncPostgresStore differ in their SQL text
# and their I/O lines only, and share the expiry rule, the merge and what counts as a session.

if TYPE_CHECKING:
    Statement: TypeAlias = tuple[str, tuple[Any, ...], str]
    SQLSteps: TypeAlias = Generator[Statement, Any, Any]

_SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PRUNE_BATCH = 100             # expired rows deleted a write, at most
_PRUNE_INTERVAL_MS = 60_000    # between prunes, unless the last one found a full batch
_MAX_KNOWN_EXPIRIES = 4096     # remembered stored expiries (for touch_after), per store


def _sql_table(table: Any, store: str) -> str:
    """`table` ("name" or "schema.name") quoted for SQL; a value that is not a plain SQL name
    is refused, so nothing a setting holds is ever formatted into a statement unchecked."""
    parts = table.split(".") if isinstance(table, str) else []
    if not 1 <= len(parts) <= 2 or not all(_SQL_NAME.fullmatch(part) for part in parts):
        raise ValueError(f"{store} table must be a plain SQL name (letters, digits, _; at most 63 each), "
                         f"or schema.name, not {table!r}")
    return ".".join(f'"{part}"' for part in parts)


class _SQLStore:
    """What the SQL stores share, without I/O: the table's name, the store's clock and ttl,
    and each operation as steps (see above). A session's row lives until its expiry column
    (set from cookie.expires, else now + ttl): that column, not the expires inside the JSON,
    decides, as for connect-sqlite3 and connect-pg-simple."""

    # The statements, as format strings of {table}; parameters are always bound, never formatted.
    _SELECT = ""       # (sid, now) -> sess as text, expiry in ms or s: a live session's row
    _LOCK = ""         # the same, for a read-modify-write in one transaction
    _INSERT = ""       # (sid, sess, expiry): insert or replace sess and expiry, keeping other columns
    _TOUCH = ""        # (expiry, sid, now): move a live row's expiry
    _WRITE = ""        # (sess, expiry, sid)
    _WRITE_SESS = ""   # (sess, sid): keep the expiry (a websocket's save)
    _DELETE = ""       # (sid,)
    _ALL = ""          # (now,) -> sid, sess of live rows
    _COUNT = ""        # (now,) -> count of live rows
    _CLEAR = ""
    _PRUNE = ""        # (now, batch): delete up to batch expired rows
    _EXISTS = ""       # (sid, now) -> a row when the session is live
    _SESSIONS_OF = ""  # (user, now) -> sid, sess of a user's live rows ({user}: the user_key's JSON is)
    _DESTROY_OF = ""   # (user, keep, now): delete a user's live rows but keep
    _USER = ""         # the user_key's value in sess, as JSON (indexed); {key} is the key
    _USER_IS = ""      # {user} compared with a parameter

    def __init__(self, table: str, ttl: int, touch_after: int | None, now: Clock,
                 user_key: str | None = None) -> None:
        self.table = table
        quoted = _sql_table(table, type(self).__name__)
        # A user's sessions are found by the JSON of sess itself (so Node's are found too), with
        # an index on that expression; user_key is a plain name (checked), never a value.
        self.user_key = _check_user_key(user_key, type(self).__name__)
        self._user_expression = self._USER.format(key=user_key or "")
        user_is = self._USER_IS.format(user=self._user_expression)
        self._sql = {name: getattr(self, name).format(table=quoted, user=user_is)
                     for name in ("_SELECT", "_LOCK", "_INSERT", "_TOUCH", "_WRITE", "_WRITE_SESS", "_DELETE",
                                  "_ALL", "_COUNT", "_CLEAR", "_PRUNE", "_EXISTS", "_SESSIONS_OF", "_DESTROY_OF")}
        self._quoted = quoted
        self.ttl = _check_ttl(ttl)
        self.touch_after = _check_touch_after(touch_after)
        if not callable(now):
            raise TypeError("now must be a clock: a callable returning seconds since the epoch")
        self._now = now
        self._known_expiry: dict[str, int] = {}   # sid -> stored expiry (ms) as this store last saw it
        self._prune_due = 0

    # How each database writes and compares an expiry (epoch ms here).
    @staticmethod
    def _moment(ms: int) -> Any:
        return ms

    @staticmethod
    def _ms(stored: Any) -> int | None:
        return stored if stored.__class__ is int else None

    def _expiry(self, document: Mapping[str, Any], now_ms: int) -> int:
        return int(_deadline_ms(_document_expires_ms(document), now_ms, self.ttl))

    def _remember(self, sid: str, expiry_ms: int | None) -> None:
        known = self._known_expiry
        if len(known) >= _MAX_KNOWN_EXPIRIES:
            known.clear()
        if expiry_ms is None:
            known.pop(sid, None)
        else:
            known[sid] = expiry_ms

    def _session(self, raw: Any) -> Document | None:
        """A row's sess as a session document, or None (section 10: no error for what others wrote)."""
        return _loads_document(raw) if isinstance(raw, (str, bytes)) else None

    # -- the operations, as steps --------------------------------------------------------
    def _get(self, sid: str) -> SQLSteps:
        row = yield (self._sql["_SELECT"], (sid, self._moment(_now_ms(self._now))), "one")
        document = None if row is None else self._session(row[0])
        self._remember(sid, None if document is None else self._ms(row[1]))
        return document

    def _set(self, sid: str, session: Document) -> SQLSteps:
        now_ms = _now_ms(self._now)
        expiry = self._expiry(session, now_ms)
        if expiry <= now_ms:  # already over: nothing to keep
            yield (self._sql["_DELETE"], (sid,), "count")
            return
        yield (self._sql["_INSERT"], (sid, _dumps(session), self._moment(expiry)), "count")
        self._remember(sid, self._ms(self._moment(expiry)))
        # Expired rows go a bounded batch at a time, as new sessions are stored (a statement of
        # its own: an error in it would not undo the save).
        if now_ms >= self._prune_due:
            pruned = yield (self._sql["_PRUNE"], (self._moment(now_ms), _PRUNE_BATCH), "count")
            self._prune_due = now_ms + (0 if pruned >= _PRUNE_BATCH else _PRUNE_INTERVAL_MS)

    def _touch(self, sid: str, session: Document) -> SQLSteps:
        """Move a live row's expiry. When the stored expiry (as this store last read or wrote
        it) is within `touch_after` of the new one, only check that the row is still there: a
        read, not a write, for most page views; a session deleted meanwhile is reported."""
        now_ms = _now_ms(self._now)
        expiry = self._expiry(session, now_ms)
        known = self._known_expiry.get(sid)
        tolerance = _touch_tolerance(self.touch_after, session.get("cookie"), self.ttl)
        if known is not None and 0 <= self._ms(self._moment(expiry)) - known < tolerance:  # type: ignore[operator]
            return (yield (self._sql["_EXISTS"], (sid, self._moment(now_ms)), "one")) is not None
        changed = yield (self._sql["_TOUCH"], (self._moment(expiry), sid, self._moment(now_ms)), "count")
        self._remember(sid, self._ms(self._moment(expiry)) if changed else None)
        return changed > 0

    def _update(self, sid: str, changes: Mapping[str, Any], deleted: Iterable[str],
                cookie: Document | None) -> SQLSteps:
        """In one transaction, the row locked: merge this request's keys onto the stored copy;
        False, writing nothing, when the session is gone (a logout elsewhere)."""
        now_ms = _now_ms(self._now)
        row = yield (self._sql["_LOCK"], (sid, self._moment(now_ms)), "one")
        document = None if row is None else self._session(row[0])
        if document is None:
            self._remember(sid, None)
            return False
        if cookie is not None:
            document["cookie"] = cookie
        _apply_changes(document, changes, deleted)
        if cookie is None:  # the stored cookie and expiry stay as they are
            yield (self._sql["_WRITE_SESS"], (_dumps(document), sid), "count")
            return True
        expiry = self._expiry(document, now_ms)
        if expiry <= now_ms:
            yield (self._sql["_DELETE"], (sid,), "count")
            self._remember(sid, None)
            return False
        yield (self._sql["_WRITE"], (_dumps(document), self._moment(expiry), sid), "count")
        self._remember(sid, self._ms(self._moment(expiry)))
        return True

    def _destroy(self, sid: str) -> SQLSteps:
        yield (self._sql["_DELETE"], (sid,), "count")
        self._remember(sid, None)

    def _all(self) -> SQLSteps:
        rows = yield (self._sql["_ALL"], (self._moment(_now_ms(self._now)),), "all")
        sessions = {}
        for sid, raw in rows:
            document = self._session(raw)
            if document is not None and isinstance(sid, str):
                sessions[sid] = document
        return sessions

    def _length(self) -> SQLSteps:
        row = yield (self._sql["_COUNT"], (self._moment(_now_ms(self._now)),), "one")
        return int(row[0])

    def _clear(self) -> SQLSteps:
        yield (self._sql["_CLEAR"], (), "count")
        self._known_expiry.clear()

    def _user_json(self, user: Any) -> str:
        if self.user_key is None:
            raise _no_user_index(self)
        return _dumps(user)

    def _sessions_of(self, user: Any) -> SQLSteps:
        user_json = self._user_json(user)
        rows = yield (self._sql["_SESSIONS_OF"], (user_json, self._moment(_now_ms(self._now))), "all")
        sessions = {}
        for sid, raw in rows:
            document = self._session(raw)
            if document is not None and _user_of(document, self.user_key) == user_json:
                sessions[sid] = document
        return sessions

    def _destroy_sessions_of(self, user: Any, keep: str | None) -> SQLSteps:
        user_json = self._user_json(user)
        return (yield (self._sql["_DESTROY_OF"], (user_json, keep or "", self._moment(_now_ms(self._now))), "count"))


class _SyncSQLStore(_SQLStore):
    """The store interface of the sync SQL stores: each method runs its steps with the
    store's _run (a transaction for a read-modify-write)."""

    def _run(self, steps: SQLSteps, transaction: bool = False) -> Any:
        raise NotImplementedError

    def get(self, sid: str) -> Document | None:
        return self._run(self._get(sid))  # type: ignore[no-any-return]

    def set(self, sid: str, session: Document, max_age: int | None = None) -> None:
        self._run(self._set(sid, session))

    def touch(self, sid: str, session: Document) -> bool:
        return bool(self._run(self._touch(sid, session)))

    def update(self, sid: str, changes: Mapping[str, Any], deleted: Iterable[str],
               cookie: Document | None, max_age: int | None = None) -> bool:
        if not changes and not deleted and cookie is not None:  # nothing of the data changed: a touch
            return self.touch(sid, {"cookie": cookie})
        return bool(self._run(self._update(sid, changes, deleted, cookie), transaction=True))

    def destroy(self, sid: str) -> None:
        self._run(self._destroy(sid))

    def all(self) -> dict[str, Document]:
        return self._run(self._all())  # type: ignore[no-any-return]

    def length(self) -> int:
        return int(self._run(self._length()))

    def clear(self) -> None:
        self._run(self._clear())

    def sessions_of(self, user: Any) -> dict[str, Document]:
        """`user`'s live sessions, {sid: document}, found by the JSON of sess (Node's too)."""
        return self._run(self._sessions_of(user))  # type: ignore[no-any-return]

    def destroy_sessions_of(self, user: Any, keep: str | None = None) -> int:
        """End `user`'s live sessions but `keep`, in one statement; how many."""
        return int(self._run(self._destroy_sessions_of(user, keep)))


class SQLiteStore(_SyncSQLStore):
    """Sessions in a SQLite database file, in connect-sqlite3's table (`sid` primary key,
    `expired` in epoch ms, `sess` the document as JSON text), so a Node app using
    connect-sqlite3 on the same file shares them. For the threads and processes of one
    machine: WAL, a busy timeout (`busy_timeout`, ms), and each read-modify-write in one
    BEGIN IMMEDIATE transaction. The table (and an index on `expired`, for pruning) is made
    when missing. Under ASGI its calls run on worker threads.
    """

    _SELECT = "SELECT sess, expired FROM {table} WHERE sid = ? AND expired > ?"
    _LOCK = _SELECT
    _INSERT = ("INSERT INTO {table} (sid, sess, expired) VALUES (?, ?, ?) "
               "ON CONFLICT (sid) DO UPDATE SET sess = excluded.sess, expired = excluded.expired")
    _TOUCH = "UPDATE {table} SET expired = ? WHERE sid = ? AND expired > ?"
    _WRITE = "UPDATE {table} SET sess = ?, expired = ? WHERE sid = ?"
    _WRITE_SESS = "UPDATE {table} SET sess = ? WHERE sid = ?"
    _DELETE = "DELETE FROM {table} WHERE sid = ?"
    _ALL = "SELECT sid, sess FROM {table} WHERE expired > ?"
    _COUNT = "SELECT count(*) FROM {table} WHERE expired > ?"
    _CLEAR = "DELETE FROM {table}"
    _PRUNE = "DELETE FROM {table} WHERE sid IN (SELECT sid FROM {table} WHERE expired <= ? LIMIT ?)"
    _EXISTS = "SELECT 1 FROM {table} WHERE sid = ? AND expired > ?"
    _USER = "json_quote(json_extract(sess, '$.\"{key}\"'))"
    _USER_IS = "{user} = ?"
    _SESSIONS_OF = "SELECT sid, sess FROM {table} WHERE {user} AND expired > ?"
    _DESTROY_OF = "DELETE FROM {table} WHERE {user} AND sid <> ? AND expired > ?"

    def __init__(self, path: str | os.PathLike[str] = "sessions.sqlite3", table: str = "sessions",
                 ttl: int = DAY_MS, *, touch_after: int | None = None, busy_timeout: int = 10_000,
                 user_key: str | None = None, now: Clock = time.time) -> None:
        super().__init__(table, ttl, touch_after, now, user_key)
        self.path = os.fspath(path)
        if self.path == ":memory:" or "mode=memory" in self.path:
            raise ValueError("SQLiteStore path must be a file: an in-memory database is one per connection, "
                             "and each thread has its own; use MemoryStore for sessions in memory")
        self.busy_timeout = _check_ttl(busy_timeout, "busy_timeout")
        self._local = threading.local()
        name = self._quoted[1:-1].replace('"."', "_")
        try:
            with self._connection() as connection:
                connection.execute(f'CREATE TABLE IF NOT EXISTS {self._quoted} (sid PRIMARY KEY, expired, sess)')
                connection.execute(f'CREATE INDEX IF NOT EXISTS "{name}_expired" ON {self._quoted} (expired)')
                if self.user_key is not None:
                    connection.execute(f'CREATE INDEX IF NOT EXISTS "{name}_user_{self.user_key}" '
                                       f"ON {self._quoted} ({self._user_expression})")
                connection.execute(f"SELECT sid, expired, sess FROM {self._quoted} LIMIT 0")
        except _sqlite3_errors() as error:
            raise type(error)(f"SQLiteStore cannot use {self.path!r} (table {table!r}): {error}. It needs a "
                              "SQLite file it may write in a folder that exists, with connect-sqlite3's "
                              "table (sid, expired, sess) or none") from None

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """This thread's connection (one a thread and process: sqlite3's may not be shared)."""
        import sqlite3
        held = getattr(self._local, "held", None)
        if held is None or held[0] != os.getpid():
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout / 1000, isolation_level=None)
            connection.execute("PRAGMA journal_mode = WAL")   # readers never wait for the writer
            connection.execute("PRAGMA synchronous = NORMAL")  # (safe in WAL: a crash loses no committed data)
            held = self._local.held = (os.getpid(), connection)
        yield held[1]

    def _run(self, steps: SQLSteps, transaction: bool = False) -> Any:
        with self._connection() as connection:
            if transaction:
                connection.execute("BEGIN IMMEDIATE")  # the write lock first: no deadlock on upgrade
            try:
                result = _run_statements(steps, connection.execute)
            except BaseException:
                if transaction:
                    connection.execute("ROLLBACK")
                raise
            if transaction:
                connection.execute("COMMIT")
            return result


def _sqlite3_errors() -> tuple[type[BaseException], ...]:
    import sqlite3
    return (sqlite3.Error,)


def _run_statements(steps: SQLSteps, execute: Callable[[str, tuple[Any, ...]], Any]) -> Any:
    """Run SQL steps with a DB-API `execute` (sqlite3's connection, psycopg's)."""
    try:
        sql, parameters, want = next(steps)
        while True:
            cursor = execute(sql, parameters)
            result = cursor.fetchone() if want == "one" else cursor.fetchall() if want == "all" else cursor.rowcount
            sql, parameters, want = steps.send(result)
    except StopIteration as end:
        return end.value


async def _arun_statements(steps: SQLSteps, execute: Callable[[str, tuple[Any, ...]], Awaitable[Any]]) -> Any:
    """The same, awaited (psycopg's AsyncConnection)."""
    try:
        sql, parameters, want = next(steps)
        while True:
            cursor = await execute(sql, parameters)
            result = (await cursor.fetchone() if want == "one" else await cursor.fetchall() if want == "all"
                      else cursor.rowcount)
            sql, parameters, want = steps.send(result)
    except StopIteration as end:
        return end.value


class _PostgresTable(_SQLStore):
    """What PostgresStore and AsyncPostgresStore share: connect-pg-simple's table and its way
    with time. `expire` is written as to_timestamp() of epoch seconds rounded up and compared
    in the database, as connect-pg-simple does, so both runtimes agree on what has expired
    whatever the server's TimeZone, as long as their connections use the same one."""

    _SELECT = ("SELECT sess::text, extract(epoch FROM expire::timestamptz) FROM {table} "
               "WHERE sid = %s AND expire >= to_timestamp(%s)")
    _LOCK = _SELECT + " FOR UPDATE"
    _INSERT = ("INSERT INTO {table} (sid, sess, expire) VALUES (%s, CAST(%s AS json), to_timestamp(%s)) "
               "ON CONFLICT (sid) DO UPDATE SET sess = excluded.sess, expire = excluded.expire")
    _TOUCH = "UPDATE {table} SET expire = to_timestamp(%s) WHERE sid = %s AND expire >= to_timestamp(%s)"
    _WRITE = "UPDATE {table} SET sess = CAST(%s AS json), expire = to_timestamp(%s) WHERE sid = %s"
    _WRITE_SESS = "UPDATE {table} SET sess = CAST(%s AS json) WHERE sid = %s"
    _DELETE = "DELETE FROM {table} WHERE sid = %s"
    _ALL = "SELECT sid, sess::text FROM {table} WHERE expire >= to_timestamp(%s)"
    _COUNT = "SELECT count(*) FROM {table} WHERE expire >= to_timestamp(%s)"
    _CLEAR = "DELETE FROM {table}"
    _PRUNE = ("DELETE FROM {table} WHERE sid IN (SELECT sid FROM {table} WHERE expire < to_timestamp(%s) "
              "LIMIT %s FOR UPDATE SKIP LOCKED)")
    _EXISTS = "SELECT 1 FROM {table} WHERE sid = %s AND expire >= to_timestamp(%s)"
    _USER = "(sess::jsonb -> '{key}')"
    _USER_IS = "{user} = CAST(%s AS jsonb)"
    _SESSIONS_OF = "SELECT sid, sess::text FROM {table} WHERE {user} AND expire >= to_timestamp(%s)"
    _DESTROY_OF = "DELETE FROM {table} WHERE {user} AND sid <> %s AND expire >= to_timestamp(%s)"
    _asynchronous = False
    _pool_example = "psycopg_pool.ConnectionPool(conninfo, open=True)"

    def __init__(self, pool: Any, table: str = "session", ttl: int = DAY_MS, create_table: bool = False, *,
                 touch_after: int | None = None, user_key: str | None = None, now: Clock = time.time) -> None:
        super().__init__(table, ttl, touch_after, now, user_key)
        store = type(self).__name__
        connection = getattr(pool, "connection", None)
        if not callable(connection):
            what = "a connection" if callable(getattr(pool, "cursor", None)) else type(pool).__name__
            raise TypeError(f"{store} needs a connection pool, not {what}: {self._pool_example} (anything with "
                            "its connection() context manager)")
        asynchronous = inspect.iscoroutinefunction(getattr(pool, "getconn", None)) or \
            inspect.isasyncgenfunction(getattr(connection, "__wrapped__", None))
        if asynchronous != self._asynchronous:
            raise TypeError(f"{store} was given {'an async' if asynchronous else 'a sync'} pool: use "
                            f"{'AsyncPostgresStore' if asynchronous else 'PostgresStore'}(pool)"
                            f"{' under ASGI or Quart' if asynchronous else ''}, or give it "
                            f"{self._pool_example}")
        self.pool = pool
        self.create_table = _require_bool(create_table, "create_table")
        name = self._quoted.rsplit(".", 1)[-1][1:-1]
        create = (f'CREATE TABLE IF NOT EXISTS {self._quoted} ("sid" varchar NOT NULL COLLATE "default", '
                  f'"sess" json NOT NULL, "expire" timestamp(6) NOT NULL, '
                  f'CONSTRAINT "{name}_pkey" PRIMARY KEY ("sid"))')
        self._ddl = (create, f'CREATE INDEX IF NOT EXISTS "IDX_{name}_expire" ON {self._quoted} ("expire")')
        self._ready = False

    @staticmethod
    def _moment(ms: int) -> Any:
        return -(-ms // 1000)   # whole seconds, rounded up, as connect-pg-simple writes and compares them

    @staticmethod
    def _ms(stored: Any) -> int | None:
        return None if stored is None else int(stored) * 1000

    def _setup(self) -> SQLSteps:
        """The table: there (and connect-pg-simple's columns), or made when create_table says so."""
        row = yield ("SELECT to_regclass(%s::text)", (self._quoted,), "one")
        if row[0] is None:
            if not self.create_table:
                raise RuntimeError(f"{type(self).__name__}: the table {self.table!r} does not exist. Create it once "
                                   f"({'; '.join(self._ddl)}), or pass create_table=True")
            yield ("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._quoted,), "one")  # one creator at a time
            for statement in self._ddl:
                yield (statement, (), "count")
        yield (f"SELECT sid, sess, expire FROM {self._quoted} LIMIT 0", (), "count")
        if self.user_key is not None:   # (an index beside connect-pg-simple's columns: it reads none)
            name = self._quoted.rsplit(".", 1)[-1][1:-1]
            yield ("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._quoted,), "one")
            index = f'CREATE INDEX IF NOT EXISTS "IDX_{name}_{self.user_key}" ON {self._quoted} ({self._user_expression})'
            yield (index, (), "count")


class PostgresStore(_PostgresTable, _SyncSQLStore):
    """Sessions in PostgreSQL, in connect-pg-simple's table ("session": sid varchar primary
    key, sess json, expire timestamp(6), index "IDX_session_expire"), so a Node app using
    connect-pg-simple on the same table shares them. `pool` is a psycopg 3 ConnectionPool
    (or anything with its connection() context manager); this module imports no driver.
    Each operation is one transaction; an update locks the row (SELECT ... FOR UPDATE).
    The table is checked (and with create_table=True made) when the store is built.
    """

    def __init__(self, pool: Any, table: str = "session", ttl: int = DAY_MS, create_table: bool = False, *,
                 touch_after: int | None = None, user_key: str | None = None, now: Clock = time.time) -> None:
        super().__init__(pool, table, ttl, create_table, touch_after=touch_after, user_key=user_key, now=now)
        self._run(self._setup(), transaction=True)
        self._ready = True

    def _run(self, steps: SQLSteps, transaction: bool = False) -> Any:
        """One transaction for a read-modify-write; otherwise its one statement is one round
        trip (autocommit: no BEGIN and COMMIT around it). The connection goes back to the pool
        as it came."""
        with self.pool.connection() as connection:
            if transaction:
                with connection.transaction():
                    return _run_statements(steps, connection.execute)
            autocommit = connection.autocommit
            connection.autocommit = True
            try:
                return _run_statements(steps, connection.execute)
            finally:
                connection.autocommit = autocommit


class AsyncPostgresStore(_PostgresTable):
    """PostgresStore for a psycopg 3 AsyncConnectionPool, awaited on the event loop (ASGI,
    Quart): the same table, rows and guarantees. The table is checked (or made) at the first
    call. Its methods are the async twins (aget, aset, adestroy, atouch, aupdate) and async
    all(), length() and clear(); under WSGI use PostgresStore.
    """

    _asynchronous = True
    _pool_example = "psycopg_pool.AsyncConnectionPool(conninfo, open=False), opened with await pool.open()"
    _sync_twin = "PostgresStore"

    async def _run(self, steps: SQLSteps, transaction: bool = False) -> Any:
        """PostgresStore._run, awaited."""
        async with self.pool.connection() as connection:
            if not self._ready:
                async with connection.transaction():
                    await _arun_statements(self._setup(), connection.execute)
                self._ready = True
            if transaction:
                async with connection.transaction():
                    return await _arun_statements(steps, connection.execute)
            autocommit = connection.autocommit
            await connection.set_autocommit(True)
            try:
                return await _arun_statements(steps, connection.execute)
            finally:
                await connection.set_autocommit(autocommit)

    async def aget(self, sid: str) -> Document | None:
        return await self._run(self._get(sid))  # type: ignore[no-any-return]

    async def aset(self, sid: str, session: Document, max_age: int | None = None) -> None:
        await self._run(self._set(sid, session))

    async def atouch(self, sid: str, session: Document) -> bool:
        return bool(await self._run(self._touch(sid, session)))

    async def aupdate(self, sid: str, changes: Mapping[str, Any], deleted: Iterable[str],
                      cookie: Document | None, max_age: int | None = None) -> bool:
        if not changes and not deleted and cookie is not None:  # nothing of the data changed: a touch
            return await self.atouch(sid, {"cookie": cookie})
        return bool(await self._run(self._update(sid, changes, deleted, cookie), transaction=True))

    async def adestroy(self, sid: str) -> None:
        await self._run(self._destroy(sid))

    async def all(self) -> dict[str, Document]:
        return await self._run(self._all())  # type: ignore[no-any-return]

    async def length(self) -> int:
        return int(await self._run(self._length()))

    async def clear(self) -> None:
        await self._run(self._clear())

    async def asessions_of(self, user: Any) -> dict[str, Document]:
        """PostgresStore.sessions_of, awaited."""
        return await self._run(self._sessions_of(user))  # type: ignore[no-any-return]

    async def adestroy_sessions_of(self, user: Any, keep: str | None = None) -> int:
        """PostgresStore.destroy_sessions_of, awaited."""
        return int(await self._run(self._destroy_sessions_of(user, keep)))


# ---------------------------------------------------------------------------
# Options: what both wrappers accept and share
# ---------------------------------------------------------------------------

_UNSET: Any = object()
_COOKIE_ALIASES = {"maxAge": "max_age", "httpOnly": "http_only", "sameSite": "same_site"}
_COOKIE_KEYS = ("max_age", "expires", "secure", "http_only", "path", "domain", "same_site",
                "partitioned", "priority")
_OPTION_NAMES = ("secret", "name", "cookie", "store", "resave", "save_uninitialized", "rolling",
                 "genid", "proxy", "login_key", "now", "saveUninitialized")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")       # RFC 6265 cookie-name
_MAX_COOKIE_CHARS = 4096
_MIN_SECRET_BYTES = 32   # a shorter secret is warned about
_MAX_VERIFIED = 4096   # remembered session cookie values, per middleware


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _require_bool(value: Any, option: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{option} must be True or False, not {value!r}")
    return value


def _choice(value: Any, option: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{option} must be one of {allowed} or None, not {value!r}")
    return value.lower()


class _CookieOptions:
    """Validated cookie options: what a new or regenerated session's cookie gets."""

    __slots__ = (
        "domain",
        "expires_ms",
        "http_only",
        "max_age",
        "partitioned",
        "path",
        "priority",
        "same_site",
        "secure",
        "traps",
    )

    def __init__(self, raw: Any, source: str = "cookie") -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise TypeError(f"{source} must be a dict of cookie options, not {type(raw).__name__}")
        given: dict[str, Any] = {}
        for key, value in raw.items():
            name = _COOKIE_ALIASES.get(key, key)
            if name not in _COOKIE_KEYS:
                raise TypeError(f"unknown {source} option {key!r}"
                                f"{_did_you_mean(str(key), [*_COOKIE_KEYS, *_COOKIE_ALIASES])}")
            if name in given:
                raise TypeError(f"{source} option {name!r} is given twice (also as {key!r})")
            given[name] = value

        if "max_age" in given and given.get("expires") is not None:
            raise ValueError(f"{source}: give max_age or expires, not both")
        self.max_age = _millis(given.get("max_age", None if "expires" in given else DAY_MS),
                               f"{source} max_age")
        if self.max_age is not None and self.max_age <= 0:
            raise ValueError(f"{source} max_age must be a positive number of milliseconds "
                             f"(or None for a browser-session cookie), not {given['max_age']!r}")
        if self.max_age is not None:
            _checked_expiry(_now_ms(time.time) + self.max_age, f"{source} max_age")
        expires = given.get("expires")
        if expires is not None and (not isinstance(expires, datetime) or expires.tzinfo is None):
            raise TypeError(f"{source} expires must be a timezone-aware datetime or None, not {expires!r}")
        self.expires_ms = None if expires is None else _checked_expiry(_datetime_ms(expires), f"{source} expires")

        secure = given.get("secure", False)
        if secure != "auto":
            _require_bool(secure, f"{source} secure (or 'auto')")
        self.secure: bool | str = secure
        self.http_only = _require_bool(given.get("http_only", True), f"{source} http_only")
        self.partitioned = _require_bool(given.get("partitioned", False), f"{source} partitioned")

        path = given.get("path", "/")
        if not _valid_path(path):
            raise ValueError(f"{source} path must be a str starting with '/' without spaces, "
                             f"';' or control characters, not {path!r}")
        self.path: str = path
        domain = given.get("domain")
        if domain is not None and not _valid_domain(domain):
            raise ValueError(f"{source} domain must be a host name or None, not {domain!r}")
        self.domain: str | None = domain

        same_site = given.get("same_site", "lax")
        if same_site is True:  # as express's `cookie` package: true means Strict
            same_site = "strict"
        elif same_site is False:
            same_site = None
        if same_site is not None:
            same_site = _choice(same_site, f"{source} same_site", (*_SAME_SITE_VALUES, "auto"))
        self.same_site: str | None = same_site
        priority = given.get("priority")
        self.priority = None if priority is None else _choice(priority, f"{source} priority",
                                                               _PRIORITY_VALUES)
        # Settings that work but are most likely mistakes: warned about, never refused (a
        # config copied from a Node app must keep working).
        traps = []
        max_age = given.get("max_age")
        if isinstance(max_age, (int, float)) and not isinstance(max_age, bool) and 0 < max_age < 60_000:
            traps.append(f"{source} max_age={max_age!r} is in milliseconds, as in express-session: "
                         f"{max_age / 1000:g} seconds. Did you mean seconds? Write max_age={max_age!r} * 1000 or "
                         f"datetime.timedelta(seconds={max_age!r})")
        if same_site == "none" and secure is False:
            traps.append(f"{source} same_site='none' without secure: browsers drop a SameSite=None cookie "
                         "that is not Secure; set secure=True (or 'auto')")
        self.traps = tuple(traps)

    def new_cookie(self, secure_request: bool, now: Clock) -> SessionCookie:
        """A new session's cookie; "auto" settings follow whether this request is secure."""
        # Every new session makes one, from options validated once: set the fields directly.
        cookie = SessionCookie.__new__(SessionCookie)
        now_ms = int(now() * 1000)
        if self.expires_ms is not None:
            cookie._expires_ms = self.expires_ms
            cookie.original_max_age = self.expires_ms - now_ms
        else:
            cookie.original_max_age = self.max_age
            cookie._expires_ms = None if self.max_age is None else _expiry_after(now_ms, self.max_age)
        cookie.secure = secure_request if self.secure == "auto" else self.secure is True
        cookie.http_only = self.http_only
        cookie.path = self.path
        cookie.domain = self.domain
        cookie.same_site = ("none" if secure_request else "lax") if self.same_site == "auto" else self.same_site
        cookie.partitioned = self.partitioned
        cookie.priority = self.priority
        cookie._now = now
        return cookie


def _secrets_option(secret: Any, adapter: str = "SessionMiddleware") -> tuple[bytes, ...]:
    if secret is None:
        raise TypeError(f"secret is required: {adapter}(..., secret=os.environ['SESSION_SECRET']), with "
                        "SESSION_SECRET made once by python -c 'import secrets; print(secrets.token_hex(32))' "
                        "and kept out of the code (a list rotates secrets: the first signs, all verify)")
    values = list(secret) if isinstance(secret, (list, tuple)) else [secret]
    if not values:
        raise ValueError("secret must not be an empty list: give at least one secret")
    keys = []
    for value in values:
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"secret must be a str or bytes (or a list of them), not {type(value).__name__}")
        if not value:
            raise ValueError("secret must not be empty")
        keys.append(_secret_bytes(value))
    return tuple(keys)


def _forwarded_secure(header: str | None) -> bool:
    """Does the first X-Forwarded-Proto value say the client's connection was secure?"""
    if not header:
        return False
    return header.split(",", 1)[0].strip().lower() in ("https", "wss")


_SHARED_STORES: dict[Any, MemoryStore] = {}
_SHARED_STORE_LOCK = threading.Lock()


def _shared_memory_store(cookies: Any) -> MemoryStore:
    """The MemoryStore of the adapters given no store that would accept each other's cookies
    (`cookies`: their secrets, cookie name, path and domain): one per process, so a framework
    that builds a wrapper per route (Litestar) still has one set of sessions, and an app
    mounted at /admin with a cookie of its own never loads the public app's sessions."""
    with _SHARED_STORE_LOCK:
        store = _SHARED_STORES.get(cookies)
        if store is None:
            store = _SHARED_STORES[cookies] = MemoryStore()
        return store


_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_-]+")   # what encodeURIComponent leaves as it is, less . ! ~ * ' ( )
_URL_SAFE = bytes.maketrans(b"+/", b"-_")      # base64 -> base64url (24 bytes need no padding)


class _SessionIds:
    """New session IDs as express-session's uid-safe makes them: 24 bytes from the operating
    system's generator (os.urandom), in 32 URL-safe base64 characters.

    They are drawn 64 at a time, one system call instead of 64, and the batch is fork-safe
    at the kernel's level: it is used only while a marker byte is set in a page mapped with
    MADV_WIPEONFORK, which a child process of any fork sees zeroed (os.fork, multiprocessing,
    and a server that forks from C without Python's fork hooks, as uWSGI does). So a child
    never hands out an ID its parent holds. Where the kernel cannot wipe a page on fork (not
    Linux, or Linux before 4.14), each ID is drawn on its own."""

    BATCH = 64

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._marker = self._wiped_on_fork()

    @staticmethod
    def _wiped_on_fork() -> Any:
        """A private page the kernel zeroes in a forked child, or None."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            import mmap
            page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            page.madvise(getattr(mmap, "MADV_WIPEONFORK", 18))  # (Linux's value on every architecture)
        except (ImportError, AttributeError, OSError, ValueError):
            return None
        return page

    def draw(self) -> str:
        marker = self._marker
        if marker is not None and marker[0]:
            try:
                return self._ids.pop()
            except IndexError:  # (used up; another thread may have taken the last one)
                pass
        count = 1 if marker is None else self.BATCH
        text = binascii.b2a_base64(os.urandom(24 * count), newline=False).translate(_URL_SAFE).decode("ascii")
        if marker is not None:  # this one, and a new batch
            self._ids = [text[start:start + 32] for start in range(32, 32 * count, 32)]
            marker[0] = 1
        return text[:32]


_new_session_id = _SessionIds().draw


class _SessionConfig:
    """What every adapter shares, and needs no application for: the options, reading the
    session cookie, making IDs, cookies and cookie values, and how to call the store. The
    WSGI and ASGI wrappers add an app; Flask's and Quart's session interfaces are one."""

    _calls: _StoreCalls                     # how this adapter calls its store (set by each adapter)
    _option_names: tuple[str, ...] = _OPTION_NAMES
    _carrier = "request"                    # what genid and a callable cookie receive
    _session_class: type[Session] = Session
    _default_login_key: str | None = None   # the framework interfaces watch Flask-Login's key

    def __init__(self, *, secret: Any = None, name: str = "connect.sid",
                 cookie: Any = None, store: Any = None, resave: bool = True,
                 save_uninitialized: bool = _UNSET, rolling: bool = False,
                 genid: Callable[[Any], str] | None = None, proxy: bool | None = None,
                 login_key: str | None = _UNSET, now: Clock = time.time, **express_options: Any) -> None:
        adapter = type(self).__name__
        for key, value in express_options.items():
            if key != "saveUninitialized":
                raise TypeError(f"unknown {adapter} option {key!r}{_did_you_mean(key, self._option_names)}")
            if save_uninitialized is not _UNSET:
                raise TypeError("give save_uninitialized or saveUninitialized, not both")
            save_uninitialized = value
        if save_uninitialized is _UNSET:
            save_uninitialized = True
        self._keys = _secrets_option(secret, adapter)
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"name must be a valid cookie name (letters, digits, !#$%&'*+-.^_`|~), not {name!r}")
        self.name = name
        if callable(cookie):
            self._cookie_factory: Callable[[Any], Any] | None = cookie
            self._cookie_options = _CookieOptions({})
        else:
            self._cookie_factory = None
            self._cookie_options = _CookieOptions(cookie)
        if not callable(now):
            raise TypeError("now must be a clock: a callable returning seconds since the epoch")
        self._now = now
        if store is None:  # an adapter on its own (test) clock keeps a store on that clock
            store = _shared_memory_store(self._cookie_scope()) if now is time.time else MemoryStore(now=now)
        elif isinstance(store, type):
            raise TypeError(f"store={store.__name__} is a class; give an instance: store={store.__name__}(...)")
        self.store = store
        self.resave = _require_bool(resave, "resave")
        self.save_uninitialized = _require_bool(save_uninitialized, "save_uninitialized")
        self.rolling = _require_bool(rolling, "rolling")
        if genid is not None and not callable(genid):
            raise TypeError(f"genid must be a callable({self._carrier}) -> str, not {type(genid).__name__}")
        self._genid = genid
        if proxy not in (None, True, False):
            raise TypeError(f"proxy must be None, True or False, not {proxy!r}")
        self.proxy = proxy
        if login_key is _UNSET:
            login_key = self._default_login_key
        if login_key is not None and (not isinstance(login_key, str) or not login_key):
            raise TypeError(f"login_key must be the session key that holds the logged-in user (a str, e.g. "
                            f"'_user_id') or None, not {login_key!r}")
        self.login_key = login_key
        self._verified: dict[str, tuple[str | None, int, str]] = {}
        self._warned: set[str] = set()
        shortest = min(len(key) for key in self._keys)
        if shortest < _MIN_SECRET_BYTES:
            self.warn_once("secret", f"{adapter}: a secret of {shortest} bytes is short: under "
                                     f"{_MIN_SECRET_BYTES} bytes (such as 'keyboard cat') one cookie is enough for an "
                                     "offline search to find it, and then anyone can sign session IDs. Use "
                                     "secrets.token_hex(32), read from the environment")
        for trap in self._cookie_options.traps:
            self.warn_once(trap, f"{adapter}: {trap}")

    def warn_once(self, key: str, message: str) -> None:
        """Log a warning about a likely mistake, once per adapter."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning("bunway_session: %s", message)

    def _options_from_callable(self, carrier: Mapping[str, Any]) -> _CookieOptions:
        """A request's cookie options when the `cookie` option is a callable of the request."""
        assert self._cookie_factory is not None
        options = _CookieOptions(self._cookie_factory(carrier), f"cookie({self._carrier})")
        for trap in options.traps:
            self.warn_once(trap, f"{type(self).__name__}: {trap}")
        return options

    def _cookie_scope(self) -> tuple[Any, ...]:
        """What decides which cookies this adapter accepts: its secrets, cookie name, path, domain."""
        options = self._cookie_options
        where = (options.path, options.domain) if self._cookie_factory is None else (self._cookie_factory,)
        return (self._keys, self.name, *where)

    def generate_id(self, carrier: Mapping[str, Any] | None) -> str:
        if self._genid is None:  # 32 URL-safe characters, as express-session's uid-safe makes them
            return _new_session_id()
        sid = self._genid(carrier)
        if not isinstance(sid, str) or not sid:
            raise TypeError(f"genid must return a non-empty str, not {sid!r}")
        return sid

    def cookie_value(self, sid: str) -> str:
        """The session cookie's value, percent-encoded: "s:" + the signed ID."""
        signature = _signature(sid, self._keys[0])
        if _PLAIN_VALUE.fullmatch(sid):  # the usual ID: only the signature's + and / need escaping
            return "s%3A" + sid + "." + signature.replace("+", "%2B").replace("/", "%2F")
        return _encode_uri_component("s:" + sid + "." + signature)

    def _verify_cookie(self, raw: str | None) -> tuple[str | None, int, str]:
        """(the session ID, if the signature of the cookie value `raw` verifies; the index of
        the secret that signed it, or -1; the cookie value as we would encode it).

        A verified value is remembered (a bounded memo of a pure function of the value and
        the secrets), so a returning visitor's next requests skip the decoding and the HMAC.
        """
        # Browsers keep at most 4096 bytes of a cookie, and decoding only shortens it: a
        # longer value is refused before any work is spent on it.
        if not raw or len(raw) > _MAX_COOKIE_CHARS:
            return None, -1, ""
        known = self._verified.get(raw)
        if known is not None:
            return known
        value = _decode_cookie_value(raw)
        if not value.startswith("s:"):
            return None, -1, ""
        sid, index = _verify(value[2:], self._keys)
        if sid is None:
            return None, -1, ""
        if len(self._verified) >= _MAX_VERIFIED:
            self._verified.clear()
        result = self._verified[raw] = (sid, index, _encode_uri_component(value))
        return result


# ---------------------------------------------------------------------------
# The lifecycle: express-session's rules for one request, without I/O
# ---------------------------------------------------------------------------
#
# _Lifecycle decides; it never calls the store. Where a rule needs the store, a step
# function (commit, commit_late, commit_websocket, save_now, reload) is a generator that
# yields the call to make, e.g. ("update", sid, changes, deleted, cookie, max_age); the
# driver makes it and leaves the store's answer in `reply` of the object the steps belong
# to (the lifecycle) before resuming them, and a step function leaves what it concludes
# in its `result`. _drive makes the calls directly (WSGI, or a store that never blocks);
# _adrive awaits them (ASGI). So both wrappers follow the same rules, written once.
# (A plain for loop drives them: no send(), and no StopIteration carrying a value; that
# made a request 0.1-0.3 µs faster.)

if TYPE_CHECKING:
    StoreCall: TypeAlias = tuple[Any, ...]            # (method name, *arguments)
    Steps: TypeAlias = Generator[StoreCall, Any, Any]

_STORE_METHODS = ("get", "set", "destroy", "touch", "update", "destroy_sessions_of")


class _Replies:
    """Where a driver leaves the store's answer to a step function's last call (`reply`),
    and the step function what it concludes (`result`)."""

    __slots__ = ("reply", "result")
    reply: Any
    result: Any


def _drive(steps: Steps, methods: Mapping[str, Callable[..., Any]], into: Any) -> Any:
    """Run a step function to its end, making each store call it yields, (name, *arguments),
    as methods[name](*arguments) and leaving the answer in `into.reply`; returns its
    `into.result`."""
    into.result = None
    for step in steps:
        into.reply = methods[step[0]](*step[1:])
    return into.result


async def _adrive(steps: Steps, call: Callable[[StoreCall], Awaitable[Any]], into: Any) -> Any:
    """The same, awaiting each store call."""
    into.result = None
    for step in steps:
        into.reply = await call(step)
    return into.result


class _StoreCalls:
    """How a wrapper calls its store. WSGI calls its methods. From the event loop an async
    twin (aget, aset, adestroy, atouch, aupdate) is awaited when the store has one; a sync
    method runs inline when the store says it never blocks (`blocking = False`), and on a
    worker thread otherwise, so a disk write or a network round trip never stalls the loop."""

    __slots__ = ("can_touch", "can_update", "executor", "inline", "sync", "takes_sessions", "twins")

    def __init__(self, store: Any, *, asynchronous: bool, executor: Any = None) -> None:
        self.sync: dict[str, Callable[..., Any]] = {}              # the methods the store has
        self.twins: dict[str, Callable[..., Awaitable[Any]]] = {}  # and their async twins
        for method in _STORE_METHODS:
            sync, twin = getattr(store, method, None), getattr(store, "a" + method, None)
            if callable(sync):
                self.sync[method] = sync
            if asynchronous and callable(twin):
                self.twins[method] = twin
            if method in ("get", "set", "destroy") and method not in self.sync and method not in self.twins:
                needed = "get, set and destroy" + (" (or aget, aset and adestroy)" if asynchronous else "")
                twin_store = getattr(store, "_sync_twin", None)
                hint = ("; a store with only async methods serves ASGISessionMiddleware and QuartSessionInterface"
                        + (f": under WSGI use {twin_store}" if twin_store else "")
                        if not asynchronous and callable(twin) else "")
                raise TypeError(f"store must have {needed} methods; {type(store).__name__} has no "
                                f"{method}(){hint}")
        # Everything inline: no twins, and the store's sync methods never block.
        self.inline = not self.twins and getattr(store, "blocking", True) is False
        self.executor = executor
        self.can_touch = "touch" in self.sync or "touch" in self.twins
        self.can_update = "update" in self.sync or "update" in self.twins
        # MemoryStore (not a subclass that writes its own way) is handed sessions as the
        # lifecycle has them, where other stores take documents: see set_call.
        self.takes_sessions = self.inline and all(
            getattr(type(store), method, None) is getattr(MemoryStore, method) for method in ("set", "update", "touch"))
        if self.takes_sessions:
            for method in ("set", "update", "touch"):
                self.sync[f"_{method}_session"] = getattr(store, f"_{method}_session")

    async def acall(self, step: StoreCall) -> Any:
        """Make one store call from the event loop."""
        name = step[0]
        twin = self.twins.get(name)
        if twin is not None:
            return await twin(*step[1:])
        method = self.sync[name]
        if self.inline:
            return method(*step[1:])
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(method, *step[1:]))

    def from_thread(self, loop: asyncio.AbstractEventLoop) -> dict[str, Callable[..., Any]]:
        """The store's methods for a worker thread of an ASGI app (a sync view): a sync method
        runs there; an async-only one runs on the loop, and the thread waits for it."""
        def on_loop(name: str) -> Callable[..., Any]:
            return lambda *arguments: asyncio.run_coroutine_threadsafe(self.acall((name, *arguments)), loop).result()
        return {**{name: on_loop(name) for name in _STORE_METHODS}, **self.sync}

    # The calls that write a session: a document for a store's set and touch, the changed
    # keys for its update; MemoryStore gets the session as the lifecycle has it (the data's
    # JSON and the SessionCookie), so no document is built, no date formatted, and nothing
    # parsed or encoded again.

    def set_call(self, sid: str, data_json: str, data: Mapping[str, Any], cookie: SessionCookie) -> StoreCall:
        if self.takes_sessions:
            return ("_set_session", sid, data_json, data, cookie)
        return ("set", sid, _document(cookie, data), cookie.max_age)

    def update_call(self, sid: str, base_json: str, data_json: str, data: Mapping[str, Any],
                    cookie: SessionCookie) -> StoreCall:
        """`data` was `base_json` when loaded, and is `data_json` now."""
        if self.takes_sessions:
            return ("_update_session", sid, base_json, data_json, data, cookie)
        changes, deleted = _changed_keys(base_json, data_json, data)
        return ("update", sid, changes, deleted, cookie.to_dict(), cookie.max_age)

    def touch_call(self, sid: str, data: Mapping[str, Any], cookie: SessionCookie) -> StoreCall:
        if self.takes_sessions:
            return ("_touch_session", sid, cookie)
        return ("touch", sid, _document(cookie, data))


_DELETIONS: set[asyncio.Task[Any]] = set()   # deletions under way: discard() starts them
_NO_COOKIE: tuple[str | None, int, str] = (None, -1, "")   # what _verify_cookie says of no cookie


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Lifecycle(_Replies):
    """What one request knows of its session, and express-session's rules for it, written
    once for both wrappers: load, then at commit decide save / store touch / Set-Cookie with
    the small predicates below. The adapters hand it the session it made (it keeps no
    reference to it, so a finished request leaves no cycle for the garbage collector).
    `loop` is the ASGI app's event loop (None under WSGI)."""

    __slots__ = ("carrier", "committed_json", "config", "cookie_id", "cookie_secret_index",
                 "cookie_sent", "cookie_value", "deletions", "discarded", "gone", "id_changed", "loaded_id",
                 "loop", "marked_modified", "options", "original_json", "original_login", "saved_id",
                 "saved_json", "secure", "websocket")

    def __init__(self, config: _SessionConfig, carrier: Mapping[str, Any], secure: bool,
                 cookie_header: str | None, options: _CookieOptions,
                 loop: asyncio.AbstractEventLoop | None = None, websocket: bool = False) -> None:
        self.config = config
        # The environ or scope, for a genid that makes the ID later (only then: the environ
        # holds the session, so keeping it otherwise would be a reference cycle).
        self.carrier = carrier if config._genid is not None else None
        self.secure = secure            # the request came over https (or wss)
        self.options = options
        self.loop = loop
        self.websocket = websocket
        # The ID the request's cookie names (verified), which secret signed it, its value.
        self.cookie_id, self.cookie_secret_index, self.cookie_value = config._verify_cookie(
            _find_cookie(cookie_header, config.name)) if cookie_header else _NO_COOKIE
        self.loaded_id: str | None = None   # the ID whose stored copy this request read
        self.original_json = "{}"           # the data as loaded (JSON)
        self.saved_id: str | None = None    # the ID and data the store holds, as far as we know
        self.saved_json: str | None = None
        self.committed_json: str | None = None
        self.cookie_sent = False
        self.gone = False        # the store said this session no longer exists (logout elsewhere)
        self.id_changed = False  # regenerate() or cycle_id() gave the session a new ID
        self.marked_modified = False     # the app said so (Flask's session.modified = True)
        self.original_login: str | None = None  # the login key's value as loaded (JSON)
        self.discarded: list[str] = []   # IDs that regenerate() or destroy() left to delete
        self.deletions: list[asyncio.Task[Any]] = []   # their deletion under ASGI, under way

    # -- loading ---------------------------------------------------------------

    def load(self, document: Document | None) -> Session:
        """The request's session, from what the store returned for the cookie's ID (None:
        no cookie, or no such session): a loaded session, or a new one."""
        session = None
        if document is not None:
            stored_cookie = document.pop("cookie", None)
            document.pop("__lastAccess", None)  # another store's bookkeeping, not session data
            cookie: SessionCookie | None = None    # (no cookie object: no session, section 10)
            if isinstance(stored_cookie, dict):
                try:
                    cookie = SessionCookie.from_dict(stored_cookie, self.config._now)
                except ValueError:  # an unusable stored cookie: a new session instead
                    pass
            if cookie is not None:
                session = self.config._session_class(document, self.cookie_id, cookie, False, self)
        if session is None:
            # A new session: its ID and cookie are made when first used (Session.id).
            session = self.config._session_class({}, None, None, True, self)
        else:
            self.loaded_id = session._id
            stored_json = document.data_json if isinstance(document, _LoadedDocument) else None
            self.original_json = stored_json if stored_json is not None else _encode_data(session)
            login_key = self.config.login_key
            if login_key is not None and login_key in session:
                self.original_login = _dumps(session[login_key])
            if not self.config.resave:
                # resave=False: a loaded session counts as saved until it changes.
                self.saved_id, self.saved_json = session._id, self.original_json
        return session

    def new_id(self) -> str:
        return self.config.generate_id(self.carrier)

    def new_cookie(self) -> SessionCookie:
        return self.options.new_cookie(self.secure, self.config._now)

    # -- express-session's predicates ----------------------------------------

    def is_cookies_session(self, session: Session) -> bool:
        """Is this the session the request's cookie named (express: cookieId === sessionID)?"""
        return self.cookie_id is not None and self.cookie_id == session._id

    def is_modified(self, data_json: str) -> bool:
        return self.id_changed or self.marked_modified or self.original_json != data_json

    def is_saved(self, session: Session, data_json: str) -> bool:
        return self.saved_json == data_json and self.saved_id == session._id and not self.marked_modified

    def is_unused(self, session: Session) -> bool:
        """A new session the request never used (no data, not destroyed, no ID made: not
        regenerated, not saved) under save_uninitialized=False: commit would neither save it
        nor send its cookie, so it has nothing to do (most anonymous page views; the adapters
        skip it)."""
        return (not self.config.save_uninitialized and session._id is None and not session
                and not session._destroyed)

    def may_send_cookie(self, cookie: SessionCookie) -> bool:
        # A Secure cookie never goes out over plain http.
        if not cookie.secure or self.secure:
            return True
        self.config.warn_once("insecure request", "a Secure session cookie was not sent: the request came over "
                              "plain http. Behind a proxy that terminates TLS, pass proxy=True so that its "
                              "X-Forwarded-Proto: https counts (and have the proxy set it)")
        return False

    # -- the step functions ------------------------------------------------------

    def commit(self, session: Session) -> Steps:
        """The end of the request, just before the headers go out: touch the cookie, then
        save or store-touch the session, then the Set-Cookie header if one is due. Its
        result: the Set-Cookie values to add."""
        self.result = []
        config = self.config
        if config.login_key is not None and not session._destroyed and self.is_login(session):
            self.discarded.append(session.id)
            session._id = self.new_id()
            self.id_replaced()
        if self.discarded:
            yield from self._destroy_discarded()
        if session._destroyed:
            if self.cookie_id is not None:
                self.result = self._expired_cookie(session)
            return
        if session._cookie is not None:  # (a cookie made just now needs no touch)
            session._cookie.reset_expiry()
        data_json = _encode_data(session) if session else "{}"
        self.committed_json = data_json
        if self.is_cookies_session(session):
            # express-session's shouldSave, shouldTouch and shouldSetCookie for the session
            # the cookie named: saved when it changed, else its new expiry is stored.
            cookie = session.cookie
            if not self.is_saved(session, data_json):
                yield from self._save(session, data_json)
            elif config._calls.can_touch:
                yield config._calls.touch_call(session.id, session, cookie)
                if self.reply is False:
                    self.gone = True
            # (The app saying it changed the session, as Flask's session.modified = True or a
            # new session.permanent do, sends the cookie even when it has no expiry.)
            set_cookie = config.rolling or self.marked_modified or (
                cookie._expires_ms is not None and self.is_modified(data_json))
            if self.gone or not set_cookie or not self.may_send_cookie(cookie):
                return
        else:
            # A new (or regenerated) session: an uninitialized one is stored only once it
            # holds something, and none is stored when its cookie cannot reach the client
            # (Secure on plain http): nobody could ever come back to it.
            set_cookie = config.save_uninitialized or self.is_modified(data_json)
            if not set_cookie and self.saved_id is None:
                return
            cookie = session.cookie
            if not self.may_send_cookie(cookie):
                return
            if not self.is_saved(session, data_json):
                yield from self._save(session, data_json)
            if self.gone or not set_cookie:
                return
        self.cookie_sent = True
        self.result = [serialize_set_cookie(config.name, self._cookie_value(session), cookie, cookie._expires_ms)]

    def commit_late(self, session: Session) -> Steps:
        """At the end of a response whose headers went out earlier: save what changed since."""
        if self.discarded:
            yield from self._destroy_discarded()
        if session._destroyed or self.gone:
            return
        data_json = _encode_data(session)
        client_has_it = self.cookie_sent or self.is_cookies_session(session)
        if data_json != self.committed_json and client_has_it and not self.is_saved(session, data_json):
            yield from self._save(session, data_json)

    def commit_websocket(self, session: Session) -> Steps:
        """When a websocket's handler returns (or at asave()): its changes to a loaded
        session, key by key, leaving the stored cookie and expiry as they are (an HTTP
        request may have moved them meanwhile); nothing if the session is gone."""
        if self.loaded_id is None or self.gone:
            return  # a websocket never creates a stored session
        data_json = _encode_data(session)
        base = self.saved_json if self.saved_json is not None else self.original_json
        if data_json == base:
            return
        changes, deleted = _changed_keys(base, data_json, session)
        if not changes and not deleted:
            return
        if not self.config._calls.can_update:
            raise TypeError(f"a websocket saves its changes key by key with the store's update() (or "
                            f"aupdate()); {type(self.config.store).__name__} has neither, so its changes "
                            f"to {', '.join(map(repr, [*changes, *deleted]))} are not saved")
        yield ("update", self.loaded_id, changes, deleted, None, None)
        if self.reply:
            self.saved_id, self.saved_json = self.loaded_id, data_json
        else:
            self.gone = True

    def save_now(self, session: Session) -> Steps:
        """session.save() and asave()."""
        if self.websocket:
            yield from self.commit_websocket(session)
            return
        if self.discarded:
            yield from self._destroy_discarded()
        yield from self._save(session, _encode_data(session))

    def destroy_others(self, session: Session) -> Steps:
        """session.destroy_other_sessions(): its user's sessions but this one end (section 13);
        the result is how many ended."""
        store = self.config.store
        user_key = getattr(store, "user_key", None)
        if user_key is None:
            raise _no_user_index(store)
        user = session.get(user_key)
        if user is None:
            self.result = 0
            return
        yield ("destroy_sessions_of", user, session.id)
        self.result = self.reply

    def reload(self, sid: str) -> Steps:
        """session.reload() and areload(): the stored copy's data and cookie (the result)."""
        yield ("get", sid)
        document = self.reply
        stored_cookie = document.pop("cookie", None) if document is not None else None
        if not isinstance(stored_cookie, dict):  # (a document without its cookie object is none)
            raise LookupError(f"session {sid!r} is no longer in the store (destroyed or expired); "  # noqa: TRY004
                              "it cannot be reloaded")
        cookie = SessionCookie.from_dict(stored_cookie, self.config._now)
        document.pop("__lastAccess", None)
        # The store holds exactly this now: later saves apply changes made after it.
        self.loaded_id = sid
        self.saved_id, self.saved_json = sid, _encode_data(document)
        self.gone = False
        self.result = document, cookie

    def _save(self, session: Session, data_json: str) -> Steps:
        """Write the session. A session this request loaded is updated key by key onto the
        store's current copy when the store can (so parallel requests keep each other's
        keys, and a session destroyed meanwhile stays destroyed); otherwise the whole
        document is written, as express-session does."""
        cookie = session.cookie
        calls = self.config._calls
        if self.loaded_id is not None and self.loaded_id == session._id and calls.can_update:
            base = self.saved_json if self.saved_json is not None and self.saved_id == session._id \
                else self.original_json
            yield calls.update_call(session._id, base, data_json, session, cookie)
            if not self.reply:
                self.gone = True
                return
        else:
            yield calls.set_call(session.id, data_json, session, cookie)
        self.saved_id, self.saved_json = session._id, data_json

    def _destroy_discarded(self) -> Steps:
        while self.discarded:
            yield ("destroy", self.discarded.pop(0))

    def _expired_cookie(self, session: Session) -> list[str]:
        cookie = session.cookie
        if not self.may_send_cookie(cookie):
            return []
        return [serialize_set_cookie(self.config.name, "", cookie, 0)]

    def _cookie_value(self, session: Session) -> str:
        """The signed ID, encoded; the request's own cookie when the current secret signed it."""
        if self.cookie_secret_index == 0 and self.is_cookies_session(session):
            return self.cookie_value
        return self.config.cookie_value(session.id)

    # -- what the session's methods need ------------------------------------------

    def discard(self, sid: str | None, method: str) -> None:
        """regenerate(), cycle_id() and destroy() delete the session `sid` from the store at
        once, as express-session does, so a logout is final whatever happens to the response
        (the app raises, is cancelled, sends no body). Under ASGI a sync method cannot await
        the store: a store that never blocks is called inline, one from a worker thread (a
        sync view) directly, and otherwise the deletion runs as a task of its own, which the
        request's cancellation does not stop and which the commit awaits."""
        if self.websocket:
            raise RuntimeError(f"session.{method}() is not possible on a websocket: its handshake "
                               "cannot send a cookie. Log in and out over HTTP.")
        if sid is None:
            return
        self.discarded.append(sid)
        calls = self.config._calls
        # (The deletion has replies of its own: as a task it may run while the request
        # drives other steps.)
        if self.loop is None or calls.inline:
            _drive(self._destroy_discarded(), calls.sync, _Replies())
        elif _running_loop() is None:  # a worker thread of the app's
            _drive(self._destroy_discarded(), calls.from_thread(self.loop), _Replies())
        else:
            task = self.loop.create_task(_adrive(self._destroy_discarded(), calls.acall, _Replies()))
            _DELETIONS.add(task)     # (the loop keeps only weak references to tasks)
            task.add_done_callback(_DELETIONS.discard)
            self.deletions.append(task)

    async def settle(self) -> None:
        """Wait for the deletions discard() started (their store errors propagate)."""
        while self.deletions:
            await self.deletions.pop(0)

    def id_replaced(self) -> None:
        """regenerate() or cycle_id() gave the session a new ID."""
        self.gone = False
        self.id_changed = True

    def is_login(self, session: Session) -> bool:
        """Did this request set the login key, or change its value, on a session the store
        already holds under the cookie's ID? (A login: the interfaces then give the session
        a new ID, so an ID planted before the login is worthless after it. A new session's
        ID is fresh already.)"""
        key = self.config.login_key
        return (key is not None and key in session and self.is_cookies_session(session)
                and _dumps(session[key]) != self.original_login)

    def run(self, steps: Steps, twin: str) -> Any:
        """A sync session method's store calls: directly under WSGI, from a worker thread of
        an ASGI app, or on its event loop's thread when the store never blocks."""
        calls = self.config._calls
        if self.loop is None:
            return _drive(steps, calls.sync, self)
        if _running_loop() is None:
            return _drive(steps, calls.from_thread(self.loop), self)
        if calls.inline:
            return _drive(steps, calls.sync, self)
        method = twin[1:]
        raise RuntimeError(f"session.{method}() on the event loop would block it with "
                           f"{type(self.config.store).__name__}: use 'await session.{twin}()' (or call "
                           f"session.{method}() from a sync view, which runs on a worker thread)")

    async def arun(self, steps: Steps) -> Any:
        """An async session method's store calls, or the ASGI wrapper's."""
        if self.deletions:
            await self.settle()
        calls = self.config._calls
        if self.loop is None or calls.inline:
            return _drive(steps, calls.sync, self)
        return await _adrive(steps, calls.acall, self)


_PLAIN_SCALARS = (str, int, bool, type(None))   # == agrees with their JSON (not float's: -0.0 == 0.0)


def _changed_keys(base_json: str, data_json: str, data: Mapping[str, Any]
                  ) -> tuple[dict[str, Any], list[str]]:
    """The top-level keys set (new or with a different JSON value) and deleted since `base_json`."""
    if base_json == data_json:
        return {}, []
    base = _loads(base_json)
    changes = {}
    for key, value in data.items():
        if key not in base:
            changes[key] = value
            continue
        old = base[key]
        if value.__class__ is old.__class__ and value.__class__ in _PLAIN_SCALARS:
            if value != old:
                changes[key] = value
        elif _dumps(value) != _dumps(old):
            changes[key] = value
    deleted = [key for key in base if key not in data]
    return changes, deleted


# ---------------------------------------------------------------------------
# WSGI: SessionMiddleware
# ---------------------------------------------------------------------------

def _is_secure(environ: Mapping[str, Any], proxy: bool | None) -> bool:
    """https, as the server saw it; with proxy=True also as the first X-Forwarded-Proto says."""
    if environ.get("wsgi.url_scheme") == "https":
        return True
    return proxy is True and _forwarded_secure(environ.get("HTTP_X_FORWARDED_PROTO"))


def _request_path(environ: Mapping[str, Any]) -> str:
    return (environ.get("SCRIPT_NAME") or "") + (environ.get("PATH_INFO") or "") or "/"


def _check_app(app: Any, wrapper: str, asynchronous: bool) -> None:
    """Refuse, when the wrapper is built, an app that cannot be what it wraps: not callable,
    an ASGI app given to the WSGI wrapper, a WSGI app given to the ASGI wrapper."""
    if not callable(app):
        raise TypeError(f"app must be {'an ASGI' if asynchronous else 'a WSGI'} application (a callable), "
                        f"not {type(app).__name__}")
    if not asynchronous and hasattr(app, "session_interface") and hasattr(app, "wsgi_app"):
        raise TypeError(f"{wrapper} was given the Flask app itself; flask.session stays Flask's own cookie "
                        "that way. Set app.session_interface = FlaskSessionInterface(secret=...) to make "
                        "flask.session a bunway session (or wrap app.wsgi_app to keep Flask's session apart)")
    kind = _app_kind(app)
    if asynchronous and kind == "wsgi":
        raise TypeError(f"app looks like a WSGI application (it takes environ, start_response): wrap it in "
                        f"SessionMiddleware, not {wrapper}")
    if not asynchronous and kind == "asgi":
        raise TypeError(f"app looks like an ASGI application (async, or it takes scope, receive, send): wrap "
                        f"it in ASGISessionMiddleware, not {wrapper}")


def _app_kind(app: Any) -> str | None:
    """"asgi" for a coroutine function or a callable of three required arguments, "wsgi" for
    a plain function of two, None when it cannot be told."""
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else app.__call__
    if inspect.iscoroutinefunction(call):
        return "asgi"
    try:
        parameters = inspect.signature(call).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        return None
    required = [p for p in parameters if p.default is p.empty and p.kind != p.KEYWORD_ONLY]
    return {2: "wsgi", 3: "asgi"}.get(len(required))


class SessionMiddleware(_SessionConfig):
    """Wrap a WSGI application so every request under the cookie's path has a session.

    Options are express-session's (snake_case; its camelCase spellings are accepted too):
    secret, name, cookie, store, resave, save_uninitialized, rolling, genid, proxy.
    `now` is the clock (seconds since the epoch), for tests.
    """

    _carrier = "environ"

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        _check_app(app, "SessionMiddleware", asynchronous=False)
        super().__init__(**options)
        self.app = app
        self._calls = _StoreCalls(self.store, asynchronous=False)
        self._warn_multiprocess = isinstance(self.store, MemoryStore)

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        options = self._cookie_options if self._cookie_factory is None else self._options_from_callable(environ)
        if options.path != "/" and not _request_path(environ).startswith(options.path):
            return self.app(environ, start_response)
        if self._warn_multiprocess and environ.get("wsgi.multiprocess"):
            self._warn_multiprocess = False
            log.warning("bunway_session: MemoryStore under a multi-process server: each process "
                        "has its own sessions, so users will lose them between requests. Use "
                        "FileStore or RedisStore.")
        lifecycle = _Lifecycle(self, environ, _is_secure(environ, self.proxy), environ.get("HTTP_COOKIE"), options)
        sid = lifecycle.cookie_id
        session = environ[ENVIRON_KEY] = lifecycle.load(None if sid is None else self.store.get(sid))
        response = _Response(lifecycle, session, start_response)
        # If the app raises, nothing is committed: its half-made changes are dropped.
        body = self.app(environ, response.start_response)
        if body.__class__ is not list and inspect.isawaitable(body):
            close = getattr(body, "close", None)
            if close is not None:
                close()   # (a coroutine never awaited)
            raise TypeError("the app returned an awaitable: it is an ASGI (async) application. Wrap it in "
                            "ASGISessionMiddleware, not SessionMiddleware")
        return response.wrap(body, environ)


class _Response:
    """Holds the app's status and headers until the session is committed, then passes
    them on with the session's Set-Cookie; the commit happens at the first non-empty
    body chunk, a write() call, or the end of an empty body."""

    __slots__ = ("committed", "failed", "headers", "lifecycle", "server_start_response", "server_write",
                 "session", "status")

    def __init__(self, lifecycle: _Lifecycle, session: Session, start_response: StartResponse) -> None:
        self.lifecycle = lifecycle
        self.session = session
        self.server_start_response = start_response
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.server_write: Callable[[bytes], object] | None = None
        self.committed = False
        self.failed = False

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], object]:
        if exc_info is not None and self.server_write is not None:
            # Headers already went out: the server re-raises, as PEP 3333 says.
            return self.server_start_response(status, headers, exc_info)
        self.status, self.headers = status, headers
        return self.write

    def write(self, data: bytes) -> None:
        self.send_headers()
        assert self.server_write is not None
        self.server_write(data)

    def send_headers(self) -> None:
        if self.server_write is not None:
            return
        if self.status is None:
            raise RuntimeError("the application produced a body before calling start_response")
        set_cookies = self.commit()
        headers = self.headers
        if set_cookies:
            headers = [*headers, *[("Set-Cookie", value) for value in set_cookies]]
        self.server_write = self.server_start_response(self.status, headers)

    def wrap(self, body: Iterable[bytes], environ: WSGIEnviron) -> Iterable[bytes]:
        file_wrapper = environ.get("wsgi.file_wrapper")
        finished = isinstance(body, (list, tuple)) or (
            isinstance(file_wrapper, type) and isinstance(body, file_wrapper))
        if finished and self.status is not None:
            # The app's code has all run: commit now (or, if write() already committed, save
            # what changed since) and hand the body over untouched (a file wrapper keeps the
            # server's sendfile path).
            try:
                if self.server_write is None:
                    self.send_headers()
                else:
                    self.commit_late()
            except BaseException:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
                raise
            return body
        return _Body(self, body)

    def commit(self) -> list[str]:
        """The session's commit (none for an unused session); its Set-Cookie values."""
        self.committed = True
        lifecycle, session = self.lifecycle, self.session
        return [] if lifecycle.is_unused(session) else _drive(lifecycle.commit(session), lifecycle.config._calls.sync, lifecycle)

    def commit_late(self) -> None:
        _drive(self.lifecycle.commit_late(self.session), self.lifecycle.config._calls.sync, self.lifecycle)

    def finish(self) -> None:
        """close(): save what changed while streaming, unless the app failed."""
        if self.failed:
            return
        if self.committed:
            self.commit_late()
        elif self.status is not None:
            self.commit()  # closed before any body: still save; there are no headers left to send


class _Body:
    """The app's body iterable, committing the session before the first chunk goes out."""

    __slots__ = ("body", "iterator", "response")

    def __init__(self, response: _Response, body: Iterable[bytes]) -> None:
        self.response = response
        self.body = body
        self.iterator: Iterator[bytes] | None = None

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        response = self.response
        try:
            if self.iterator is None:
                self.iterator = iter(self.body)
            chunk = next(self.iterator)
            # Nothing may go out before the headers, and the headers wait for the first
            # non-empty chunk: empty chunks before it are consumed here.
            while not chunk and response.server_write is None:
                chunk = next(self.iterator)
        except StopIteration:
            if response.server_write is None:
                self._send_headers()
            raise
        except BaseException:
            response.failed = True
            raise
        if response.server_write is None:
            self._send_headers()
        return chunk

    def _send_headers(self) -> None:
        try:
            self.response.send_headers()
        except BaseException:
            self.response.failed = True
            raise

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.response.finish()


# ---------------------------------------------------------------------------
# ASGI: ASGISessionMiddleware
# ---------------------------------------------------------------------------

def _scope_path(scope: Mapping[str, Any]) -> str:
    """The full path, as the cookie path is matched against: root_path + path, without
    doubling it where the server already puts the root path in `path`."""
    path = scope.get("path") or "/"
    root = scope.get("root_path") or ""
    return path if not root or path.startswith(root) else root + path


def _header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """A request header's values; `name` in lower case, as ASGI servers give header names."""
    return [value.decode("latin-1") for key, value in headers if key == name]


def _scope_cookie_header(scope: Mapping[str, Any]) -> str | None:
    """The request's Cookie header; several (HTTP/2 may send one a cookie) joined once."""
    first = more = None
    for name, value in scope.get("headers") or ():
        if name == b"cookie":
            if first is None:
                first = value
            elif more is None:
                more = [first, value]
            else:
                more.append(value)
    if more is not None:
        return "; ".join(value.decode("latin-1") for value in more)
    return None if first is None else first.decode("latin-1")


def _scope_is_secure(scope: Mapping[str, Any], proxy: bool | None) -> bool:
    """https or wss, as the server saw it; with proxy=True also as the first X-Forwarded-Proto says."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    if proxy is not True:
        return False
    forwarded = _header_values(scope.get("headers") or (), b"x-forwarded-proto")
    return bool(forwarded) and _forwarded_secure(forwarded[0])


def _ends_body(message: Mapping[str, Any]) -> bool:
    kind: str = message["type"]
    if kind == "http.response.body" or kind == "http.response.zerocopysend":
        return not message.get("more_body", False)
    return kind == "http.response.pathsend"


class ASGISessionMiddleware(_SessionConfig):
    """Wrap an ASGI application (Starlette, FastAPI, Quart, Litestar, Django) so every HTTP
    request and websocket under the cookie's path has a session: scope["bunway.session"],
    and scope["session"] unless another middleware put something there.

    The options are SessionMiddleware's (a callable `cookie` and `genid` receive the scope),
    plus `executor`: where the sync methods of a store that may block run (default: the
    event loop's default executor).
    """

    _option_names = (*_OPTION_NAMES, "executor")
    _carrier = "scope"

    def __init__(self, app: Any, *, executor: Any = None, **options: Any) -> None:
        _check_app(app, "ASGISessionMiddleware", asynchronous=True)
        super().__init__(**options)
        self.app = app
        self._calls = _StoreCalls(self.store, asynchronous=True, executor=executor)
        self._warned_session_key = False

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":  # lifespan, and types we do not know
            return await self.app(scope, receive, send)  # type: ignore[no-any-return]
        options = self._cookie_options if self._cookie_factory is None else self._options_from_callable(scope)
        if options.path != "/" and not _scope_path(scope).startswith(options.path):
            return await self.app(scope, receive, send)  # type: ignore[no-any-return]
        websocket = kind == "websocket"
        lifecycle = _Lifecycle(self, scope, _scope_is_secure(scope, self.proxy), _scope_cookie_header(scope),
                               options, asyncio.get_running_loop(), websocket)
        sid = lifecycle.cookie_id
        document = None
        if sid is not None:   # (a store that never blocks is called directly: no coroutine to await)
            calls = self._calls
            document = calls.sync["get"](sid) if calls.inline else await calls.acall(("get", sid))
        session = lifecycle.load(document)
        scope = dict(scope)
        scope[ENVIRON_KEY] = session
        if "session" not in scope:
            scope["session"] = session
        elif not self._warned_session_key:
            self._warned_session_key = True
            log.warning("bunway_session: scope['session'] was already set by another middleware; "
                        "this session is at scope['bunway.session'] and get_session(request)")
        if websocket:
            # The handshake reply goes out as the app sends it (no Set-Cookie); the
            # websocket's changes are saved when its handler returns.
            await self.app(scope, receive, send)
            await lifecycle.arun(lifecycle.commit_websocket(session))
            return None
        # If the app raises, what was not committed is dropped, and the error propagates.
        await self.app(scope, receive, _ASGIResponse(lifecycle, session, send).send)
        return None


class _ASGIResponse:
    """Holds the app's http.response.start until the session is committed, at the first
    non-empty body message, a body message that ends the response, or a response extension
    (pathsend, zerocopysend, trailers); then the start goes out with the Set-Cookie added.
    Changes made while the body streams are saved before the last body message is passed
    on, so the client's next request sees them."""

    __slots__ = ("ended", "lifecycle", "send_to_server", "session", "start")

    def __init__(self, lifecycle: _Lifecycle, session: Session, send: Callable[[Any], Awaitable[None]]) -> None:
        self.lifecycle = lifecycle
        self.session = session
        self.send_to_server = send
        self.start: dict[str, Any] | None = None
        self.ended = False

    async def send(self, message: dict[str, Any]) -> None:
        start = self.start
        if start is not None:
            if message["type"] == "http.response.body" and not message.get("body") \
                    and message.get("more_body", False):
                return  # nothing to send yet, and nothing may go out before the headers
            self.start = None
            self.ended = _ends_body(message)  # the commit covers everything the app did
            # A store error here propagates to the app and the server before anything is sent.
            lifecycle = self.lifecycle
            set_cookies: list[str] = []
            if lifecycle.deletions:
                await lifecycle.settle()
            if not lifecycle.is_unused(self.session):
                calls = lifecycle.config._calls
                steps = lifecycle.commit(self.session)
                set_cookies = _drive(steps, calls.sync, lifecycle) if calls.inline \
                    else await _adrive(steps, calls.acall, lifecycle)
            if set_cookies:
                start = dict(start)
                headers = start["headers"] = list(start.get("headers", ()))
                for value in set_cookies:
                    headers.append((b"set-cookie", value.encode("latin-1")))
            await self.send_to_server(start)
        elif message["type"] == "http.response.start":
            self.start = message
            return
        elif not self.ended and _ends_body(message):
            self.ended = True
            await self.lifecycle.arun(self.lifecycle.commit_late(self.session))
        await self.send_to_server(message)


def get_session(request: Any) -> Session:
    """The request's session, from a WSGI environ, an ASGI scope, or a framework's request
    object that carries one (`.scope`: Starlette, FastAPI, Quart, Litestar, Django ASGI;
    `.environ`: Flask, Werkzeug, Bottle; `.META`: Django WSGI). LookupError when there is none."""
    carrier = request
    for attribute in ("scope", "environ", "META"):
        inner = getattr(request, attribute, None)
        if isinstance(inner, Mapping):
            carrier = inner
            break
    session = carrier.get(ENVIRON_KEY) if isinstance(carrier, Mapping) else None
    if session is None:
        raise LookupError("this request has no session: wrap the app in SessionMiddleware (WSGI) or "
                          "ASGISessionMiddleware (ASGI), and check that the request path is under the "
                          "session cookie's path")
    return session  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# The frameworks' own sessions: Flask, Quart (session interfaces) and Django (an engine)
# ---------------------------------------------------------------------------
#
# Flask and Quart ask their `app.session_interface` to open the request's session and to
# save it with the response; Django's SessionMiddleware builds `SessionStore(cookie value)`
# from the module named by SESSION_ENGINE. Each adapter translates; the rules are the
# lifecycle's (Flask, Quart) or Django's own middleware's, and the store calls are the
# same step values as everywhere, made directly, awaited or on a worker thread.

class _FrameworkSession(Session):
    """flask.session and quart.session: a Session that also behaves as Flask's SessionMixin
    (`permanent`, `modified`, `new`, `accessed`), which the frameworks and their extensions
    (Flask-Login) look at."""

    __slots__ = ("_permanent_ms", "accessed")

    def __init__(self, data: Mapping[str, Any], sid: str | None, cookie: SessionCookie | None,
                 is_new: bool, lifecycle: _Lifecycle) -> None:
        super().__init__(data, sid, cookie, is_new, lifecycle)
        self.accessed = False
        self._permanent_ms: int | None = None  # the app's permanent_session_lifetime, in ms

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.accessed = True
        return super().__contains__(key)

    @property
    def new(self) -> bool:
        """Flask's name for is_new: this request created the session."""
        return self.is_new

    @property
    def modified(self) -> bool:
        """Did this request change the session (its data, its ID, or it was destroyed)?"""
        return self._destroyed or self._lifecycle.is_modified(_encode_data(self))

    @modified.setter
    def modified(self, value: bool) -> None:
        # Changes are found by comparing the data, nested values included; True also sends
        # the cookie again and saves an unchanged session.
        self._lifecycle.marked_modified = bool(value)

    @property
    def permanent(self) -> bool:
        """True when the cookie has an expiry; False for a browser-session cookie."""
        return self.cookie.original_max_age is not None

    @permanent.setter
    def permanent(self, value: bool) -> None:
        if bool(value) == self.permanent:
            return
        self._check_writable()
        lifetime = self._lifecycle.options.max_age or self._permanent_ms or DAY_MS
        self.cookie.max_age = lifetime if value else None
        self._lifecycle.marked_modified = True


class _NoSession(dict):  # type: ignore[type-arg]
    """flask.session / quart.session on a request outside the session cookie's path: empty,
    and every write says why there is no session."""

    permanent = False
    new = False
    modified = False

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.accessed = False

    def _refuse(self, *arguments: Any, **keywords: Any) -> Any:
        raise RuntimeError(f"this request has no session: its path is outside the session cookie's path "
                           f"{self.path!r} (the cookie option 'path')")

    __setitem__ = __delitem__ = setdefault = update = pop = popitem = clear = _refuse


def _framework_of(app: Any) -> str | None:
    """"quart" or "flask", from the classes an application object is made of."""
    modules = [cls.__module__.split(".")[0] for cls in type(app).__mro__]
    return "quart" if "quart" in modules else "flask" if "flask" in modules else None


class _SessionInterface(_SessionConfig):
    """What FlaskSessionInterface and QuartSessionInterface share: the options (section 2, and
    login_key="_user_id": Flask-Login's key), the framework check, and null sessions."""

    _session_class = _FrameworkSession
    _default_login_key = "_user_id"
    _framework = ""
    _other = ""
    pickle_based = False   # (Flask's SessionInterface attribute; some extensions read it)

    def __init__(self, **options: Any) -> None:
        interface = type(self).__name__
        try:
            __import__(self._framework)
        except ImportError:
            raise ImportError(f"{interface} is for {self._framework.capitalize()} apps, and "
                              f"{self._framework.capitalize()} is not installed (pip install "
                              f"{self._framework}); a {self._other.capitalize()} app takes "
                              f"{self._other.capitalize()}SessionInterface") from None
        super().__init__(**options)

    def _check_app(self, app: Any) -> None:
        framework = _framework_of(app)
        if framework is not None and framework != self._framework:
            raise TypeError(f"{type(self).__name__} is for {self._framework.capitalize()} apps; this is a "
                            f"{framework.capitalize()} app: app.session_interface = "
                            f"{framework.capitalize()}SessionInterface(...)")

    def _options(self, carrier: Mapping[str, Any], path: str) -> _CookieOptions | None:
        """The request's cookie options, or None when its path is outside the cookie's."""
        options = self._cookie_options if self._cookie_factory is None else self._options_from_callable(carrier)
        return None if options.path != "/" and not path.startswith(options.path) else options

    def _opened(self, app: Any, carrier: dict[str, Any], lifecycle: _Lifecycle,
                document: Document | None) -> Session:
        session = lifecycle.load(document)
        assert isinstance(session, _FrameworkSession)
        lifetime = getattr(app, "permanent_session_lifetime", None)
        if isinstance(lifetime, timedelta):
            session._permanent_ms = lifetime // _ONE_MS
        carrier[ENVIRON_KEY] = session  # get_session(request) finds it too
        return session

    @staticmethod
    def is_null_session(session: Any) -> bool:
        if not isinstance(session, (Session, _NoSession)):
            raise TypeError(f"the session is a {type(session).__name__}, not a bunway session: a Flask app "
                            "takes FlaskSessionInterface and a Quart app QuartSessionInterface")
        return isinstance(session, _NoSession)

    @staticmethod
    def _add_headers(response: Any, session: Session, set_cookies: list[str]) -> None:
        for value in set_cookies:
            response.headers.add("Set-Cookie", value)
        if set_cookies or getattr(session, "accessed", False):
            response.vary.add("Cookie")  # caches must not serve one visitor's page to another


class FlaskSessionInterface(_SessionInterface):
    """Make flask.session a bunway session::

        app.session_interface = FlaskSessionInterface(secret=..., store=...)

    Options as SessionMiddleware's, plus `login_key` (default "_user_id", Flask-Login's):
    when a request sets it or changes its value, the session keeps its data under a new ID
    and the old ID leaves the store. No app.secret_key is needed for the session.
    """

    _carrier = "environ"
    _framework = "flask"
    _other = "quart"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._calls = _StoreCalls(self.store, asynchronous=False)

    def open_session(self, app: Any, request: Any) -> Session | None:
        self._check_app(app)
        environ = request.environ
        options = self._options(environ, _request_path(environ))
        if options is None:
            return None
        lifecycle = _Lifecycle(self, environ, _is_secure(environ, self.proxy), environ.get("HTTP_COOKIE"), options)
        sid = lifecycle.cookie_id
        return self._opened(app, environ, lifecycle, None if sid is None else self.store.get(sid))

    def make_null_session(self, app: Any) -> _NoSession:
        return _NoSession(self._cookie_options.path)

    def save_session(self, app: Any, session: Session, response: Any) -> None:
        # Flask saves after an unhandled error too, from inside the except block that turns it
        # into a 500: as SessionMiddleware, the half-made changes are dropped then (regenerate()
        # and destroy() deleted the old ID at once, so a logout stays final).
        if sys.exc_info()[0] is not None:
            return
        lifecycle = session._lifecycle
        set_cookies = [] if lifecycle.is_unused(session) else _drive(lifecycle.commit(session), self._calls.sync, lifecycle)
        self._add_headers(response, session, set_cookies)


class QuartSessionInterface(_SessionInterface):
    """Make quart.session a bunway session::

        app.session_interface = QuartSessionInterface(secret=..., store=...)

    FlaskSessionInterface for Quart: the store is called as under ASGISessionMiddleware
    (async twins awaited, a blocking store on a worker thread; `executor` as there), and a
    websocket's changes are saved key by key when its handler returns.
    """

    _carrier = "scope"
    _framework = "quart"
    _other = "flask"
    _option_names = (*_OPTION_NAMES, "executor")

    def __init__(self, *, executor: Any = None, **options: Any) -> None:
        super().__init__(**options)
        self._calls = _StoreCalls(self.store, asynchronous=True, executor=executor)

    async def open_session(self, app: Any, request: Any) -> Session | None:
        self._check_app(app)
        scope = request.scope
        options = self._options(scope, _scope_path(scope))
        if options is None:
            return None
        lifecycle = _Lifecycle(self, scope, _scope_is_secure(scope, self.proxy), _scope_cookie_header(scope),
                               options, asyncio.get_running_loop(), scope.get("type") == "websocket")
        sid = lifecycle.cookie_id
        calls = self._calls
        document = None if sid is None else calls.sync["get"](sid) if calls.inline else await calls.acall(("get", sid))
        return self._opened(app, scope, lifecycle, document)

    async def make_null_session(self, app: Any) -> _NoSession:
        return _NoSession(self._cookie_options.path)

    async def save_session(self, app: Any, session: Session, response: Any) -> None:
        lifecycle = session._lifecycle
        if lifecycle.websocket:
            await lifecycle.arun(lifecycle.commit_websocket(session))
            return
        if sys.exc_info()[0] is not None:  # an unhandled error (see FlaskSessionInterface)
            await lifecycle.settle()       # (a logout before it is final)
            return
        set_cookies = [] if lifecycle.is_unused(session) else await lifecycle.arun(lifecycle.commit(session))
        self._add_headers(response, session, set_cookies)


def _framework(module: str) -> Any:
    """A framework's module (Django, asgiref), imported only when that framework asks for
    this module's part of it: the module itself depends on nothing outside the standard library."""
    return importlib.import_module(module)


_DJANGO_OPTIONS = ("secret", "store", "executor")
_DJANGO_CONFIG: list[Any] = [None, None]   # [the BUNWAY_SESSION it was built from, the config]


def _django_config() -> _SessionConfig:
    """The config Django's sessions run on, from settings.BUNWAY_SESSION (built again when
    the setting changes, as under override_settings)."""
    settings = _framework("django.conf").settings
    ImproperlyConfigured = _framework("django.core.exceptions").ImproperlyConfigured

    raw = getattr(settings, "BUNWAY_SESSION", None)
    if _DJANGO_CONFIG[0] is raw and _DJANGO_CONFIG[1] is not None:
        return _DJANGO_CONFIG[1]  # type: ignore[no-any-return]
    example = ("BUNWAY_SESSION = {'secret': os.environ['SESSION_SECRET'], "
               "'store': FileStore(BASE_DIR / 'sessions')}")
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"SESSION_ENGINE = 'bunway_session' needs BUNWAY_SESSION in settings, e.g. "
                                   f"{example}; it is {raw!r}")
    for key in raw:
        if key not in _DJANGO_OPTIONS:
            raise ImproperlyConfigured(
                f"BUNWAY_SESSION has an unknown key {key!r}{_did_you_mean(str(key), _DJANGO_OPTIONS)}; it takes "
                f"{', '.join(_DJANGO_OPTIONS)}. The cookie's name and attributes come from Django's "
                "SESSION_COOKIE_* settings, and when to save from Django's SessionMiddleware.")
    try:
        config = _SessionConfig(secret=raw.get("secret"), store=raw.get("store"),
                                name=settings.SESSION_COOKIE_NAME,
                                cookie={"path": settings.SESSION_COOKIE_PATH,
                                        "domain": settings.SESSION_COOKIE_DOMAIN})
        config._calls = _StoreCalls(config.store, asynchronous=True, executor=raw.get("executor"))
    except (TypeError, ValueError) as error:
        raise ImproperlyConfigured(f"BUNWAY_SESSION: {error} (e.g. {example})") from None
    _DJANGO_CONFIG[:] = [raw, config]
    return config


def _django_session_store() -> type:
    """Django's session engine: bunway_session.SessionStore, a SessionBase whose data is a
    plain JSON session document in the bunway store under the session ID, and whose
    session_key is the cookie value express-session reads ("s%3A<id>.<signature>")."""
    try:
        base = _framework("django.contrib.sessions.backends.base")
    except ImportError:
        raise ImportError("bunway_session.SessionStore is the Django session engine (SESSION_ENGINE = "
                          "'bunway_session') and needs Django: pip install django. (The store protocol "
                          "that had this name is bunway_session.Store.)") from None

    SessionBase, UpdateError = base.SessionBase, base.UpdateError

    class SessionStore(SessionBase):  # type: ignore[misc,valid-type]
        """request.session under SESSION_ENGINE = "bunway_session". Django's middleware and
        settings decide when to save and the cookie's attributes; the stored `cookie` object
        mirrors them. A save applies only the keys this request changed (section 8), and a
        session deleted meanwhile is not brought back (UpdateError: Django then answers
        SessionInterrupted, as with its own backends)."""

        def __init__(self, session_key: str | None = None) -> None:
            self._bunway = _django_config()
            self._bunway_base: tuple[str, str] | None = None  # (ID, data JSON) the store holds, as we know
            self.reply: Any = None   # (as for _Replies: the drivers leave the store's answers here,
            self.result: Any = None  # and the steps below what they conclude)
            super().__init__(session_key)

        # -- the session key: the signed cookie value ----------------------------------
        def _bunway_sid(self, key: Any) -> str | None:
            return self._bunway._verify_cookie(key)[0] if isinstance(key, str) else None

        def _validate_session_key(self, key: Any) -> bool:
            return self._bunway_sid(key) is not None  # a cookie whose signature fails is no key

        def _get_new_session_key(self) -> str:
            config = self._bunway
            return config.cookie_value(config.generate_id({}))  # 192 random bits: no need to ask the store

        async def _aget_new_session_key(self) -> str:
            return self._get_new_session_key()

        # -- the store calls, as steps (driven directly, awaited, or on the loop) ----------
        def _run(self, steps: Steps) -> Any:
            calls = self._bunway._calls
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:  # on the event loop's thread
                if calls.inline:
                    return _drive(steps, calls.sync, self)
                raise _framework("django.core.exceptions").SynchronousOnlyOperation(
                    f"request.session with {type(self._bunway.store).__name__} would block the event loop "
                    "here: use the async methods (await request.session.aget(...), aset, apop, asave...)")
            if "get" in calls.sync:
                return _drive(steps, calls.sync, self)
            # An async-only store, from a sync thread: Django's asgiref runs it on an event loop.
            return _framework("asgiref.sync").async_to_sync(_adrive)(steps, calls.acall, self)

        async def _arun(self, steps: Steps) -> Any:
            calls = self._bunway._calls
            return _drive(steps, calls.sync, self) if calls.inline else await _adrive(steps, calls.acall, self)

        def _load_steps(self) -> Steps:
            sid = self._bunway_sid(self.session_key)
            document = None
            if sid is not None:
                yield ("get", sid)
                document = self.reply
            stored_cookie = None if document is None else document.pop("cookie", None)
            usable = isinstance(stored_cookie, dict)
            if isinstance(stored_cookie, dict):
                try:
                    SessionCookie.from_dict(stored_cookie)  # an unusable cookie: no session (section 10)
                except ValueError:
                    usable = False
            if not usable:
                self._session_key = None
                self._bunway_base = None
                self.result = {}
                return
            assert document is not None and sid is not None
            document.pop("__lastAccess", None)
            self._bunway_base = (sid, _encode_data(document))
            if self._bunway._verify_cookie(self.session_key)[1] > 0:  # signed by an older secret
                self._session_key = self._bunway.cookie_value(sid)
                self.modified = True
            self.result = document

        def _cookie(self) -> SessionCookie:
            """The stored cookie object, as Django's settings and this session make the cookie."""
            settings = _framework("django.conf").settings
            max_age = None if self.get_expire_at_browser_close() else self.get_expiry_age() * 1000
            now_ms = _now_ms(self._bunway._now)
            same_site = settings.SESSION_COOKIE_SAMESITE
            same_site = same_site.lower() if isinstance(same_site, str) and same_site.lower() in _SAME_SITE_VALUES \
                else None
            return SessionCookie(original_max_age=max_age,
                                 expires_ms=None if max_age is None else _expiry_after(now_ms, max_age),
                                 secure=bool(settings.SESSION_COOKIE_SECURE),
                                 http_only=bool(settings.SESSION_COOKIE_HTTPONLY),
                                 path=settings.SESSION_COOKIE_PATH, domain=settings.SESSION_COOKIE_DOMAIN or None,
                                 same_site=same_site, now=self._bunway._now)

        def _save_steps(self, data: dict[str, Any], must_create: bool) -> Steps:
            sid = self._bunway_sid(self.session_key)
            assert sid is not None
            data_json = _encode_data(data)
            cookie = self._cookie()
            base = self._bunway_base
            if base is not None and base[0] == sid and not must_create and self._bunway._calls.can_update:
                yield self._bunway._calls.update_call(sid, base[1], data_json, data, cookie)
                if not self.reply:
                    self._bunway_base = None
                    raise UpdateError  # deleted meanwhile (a logout): Django answers SessionInterrupted
            else:
                yield self._bunway._calls.set_call(sid, data_json, data, cookie)
            self._bunway_base = (sid, data_json)

        def _delete_steps(self, session_key: str | None) -> Steps:
            sid = self._bunway_sid(self.session_key if session_key is None else session_key)
            if sid is None:
                return
            yield ("destroy", sid)
            if self._bunway_base is not None and self._bunway_base[0] == sid:
                self._bunway_base = None

        def _exists_steps(self, session_key: str) -> Steps:
            sid = self._bunway_sid(session_key)
            self.result = False
            if sid is not None:
                yield ("get", sid)
                self.result = self.reply is not None

        # -- SessionBase's backend methods, sync and async ----------------------------------
        def load(self) -> dict[str, Any]:
            return self._run(self._load_steps())  # type: ignore[no-any-return]

        async def aload(self) -> dict[str, Any]:
            return await self._arun(self._load_steps())  # type: ignore[no-any-return]

        def exists(self, session_key: str) -> bool:
            return bool(self._run(self._exists_steps(session_key)))

        async def aexists(self, session_key: str) -> bool:
            return bool(await self._arun(self._exists_steps(session_key)))

        def create(self) -> None:
            self._session_key = self._get_new_session_key()
            self.save(must_create=True)
            self.modified = True

        async def acreate(self) -> None:
            self._session_key = self._get_new_session_key()
            await self.asave(must_create=True)
            self.modified = True

        def save(self, must_create: bool = False) -> None:
            if self.session_key is None:
                return self.create()
            self._run(self._save_steps(self._get_session(no_load=must_create), must_create))
            return None

        async def asave(self, must_create: bool = False) -> None:
            if self.session_key is None:
                return await self.acreate()
            await self._arun(self._save_steps(await self._aget_session(no_load=must_create), must_create))
            return None

        def delete(self, session_key: str | None = None) -> None:
            self._run(self._delete_steps(session_key))

        async def adelete(self, session_key: str | None = None) -> None:
            await self._arun(self._delete_steps(session_key))

        @classmethod
        def clear_expired(cls) -> None:
            """manage.py clearsessions: the built-in stores prune themselves; FileStore reaps."""
            reap = getattr(_django_config().store, "reap", None)
            if callable(reap):
                reap()

        @classmethod
        async def aclear_expired(cls) -> None:
            cls.clear_expired()

    SessionStore.__module__ = __name__
    SessionStore.__qualname__ = "SessionStore"
    return SessionStore


def __getattr__(name: str) -> Any:
    """bunway_session.SessionStore, Django's session engine, is built when Django first
    looks it up: the module imports nothing of Django until then."""
    if name == "SessionStore":
        engine = globals()["SessionStore"] = _django_session_store()
        return engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------
# The demo: python bunway_session.py [--port 8000] [--store memory|file]
# ---------------------------------------------------------------------------

_DEMO_USERS = {"alice": "wonderland"}


def _demo_page(title: str, session: Session, body: str) -> bytes:
    from html import escape
    notes = "".join(f'<p class="{escape(kind)}">{escape(message)}</p>'
                    for kind, messages in session.flash().items() for message in messages)
    user = session.get("user")
    who = (f'Signed in as <b>{escape(user)}</b>. <form method="post" action="/logout" '
           f'style="display:inline"><button>Log out</button></form>' if user
           else 'Not signed in. <a href="/login">Log in</a>')
    return (f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>"
            f"<style>body{{font:16px system-ui;margin:2em}} .error{{color:#b00}} .info{{color:#060}}</style>"
            f"<h1>{escape(title)}</h1><p>{who}</p>{notes}{body}"
            f'<p><a href="/">Home</a> · <a href="/dashboard">Dashboard</a></p>').encode()


def demo_app(environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
    """The demo: a view counter, login (regenerating the session), a protected page,
    flash messages and logout (destroying it)."""
    from urllib.parse import parse_qs
    session = get_session(environ)
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"

    def respond(status: str, page: bytes = b"", location: str | None = None,
                allow: str | None = None) -> list[bytes]:
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))]
        if location:
            headers.append(("Location", location))
        if allow:
            headers.append(("Allow", allow))
        start_response(status, headers)
        return [page]

    if path == "/" and method == "GET":
        views = session["views"] = session.get("views", 0) + 1
        times = "1 time" if views == 1 else f"{views} times"
        return respond("200 OK", _demo_page("bunway_session demo", session,
                                            f"<p>You have seen this page {times}.</p>"))
    if path == "/login" and method == "GET":
        return respond("200 OK", _demo_page("Log in", session,
                                            '<form method="post"><input name="username" placeholder="alice"> '
                                            '<input name="password" type="password" placeholder="wonderland"> '
                                            "<button>Log in</button></form>"))
    if path == "/login" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        form = parse_qs(environ["wsgi.input"].read(length).decode("utf-8", "replace"))
        username = form.get("username", [""])[0]
        if _DEMO_USERS.get(username) != form.get("password", [""])[0]:
            session.flash("error", "Wrong username or password.")
            return respond("303 See Other", location="/login")
        session.regenerate()  # a new ID at login: an ID planted before it is worthless
        session["user"] = username
        session.flash("info", f"Welcome, {username}!")
        return respond("303 See Other", location="/dashboard")
    if path == "/dashboard" and method == "GET":
        if not session.get("user"):
            return respond("401 Unauthorized", _demo_page("Dashboard", session,
                                                          '<p><a href="/login">Log in</a> to see this page.</p>'))
        return respond("200 OK", _demo_page("Dashboard", session, "<p>This page is for signed-in users.</p>"))
    if path == "/logout" and method == "POST":
        session.destroy()
        return respond("303 See Other", location="/")
    if path == "/logout":  # logging out changes state: only POST (a link or prefetch must not)
        return respond("405 Method Not Allowed", b"use POST to log out", allow="POST")
    return respond("404 Not Found", b"not found")


def main(argv: list[str] | None = None) -> None:
    import argparse
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIServer, make_server

    parser = argparse.ArgumentParser(description="Serve the bunway_session demo on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--store", choices=("memory", "file"), default="memory")
    parser.add_argument("--path", default="./sessions", help="the FileStore folder (with --store file)")
    args = parser.parse_args(argv)

    class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    secret = os.environ.get("SESSION_SECRET")
    if args.store == "file":
        store: Any = FileStore(args.path)
        lifetime = ("sessions are kept in " + args.path if secret else
                    "sessions are kept in " + args.path + "; set SESSION_SECRET to keep them "
                    "valid across restarts")
    else:
        store = MemoryStore()
        lifetime = "sessions live in memory and end when the server stops (--store file keeps them)"
    app = SessionMiddleware(demo_app, secret=secret or _secrets.token_hex(32), store=store,
                            save_uninitialized=False)
    try:
        server = make_server("127.0.0.1", args.port, app, server_class=ThreadingWSGIServer)
    except OSError as error:
        raise SystemExit(f"bunway_session demo: cannot listen on 127.0.0.1:{args.port} "
                         f"({error.strerror}); choose another port with --port") from None
    with server:
        print(f"bunway_session demo on http://127.0.0.1:{server.server_port}/ (log in as alice / "
              f"wonderland); {lifetime}.", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
