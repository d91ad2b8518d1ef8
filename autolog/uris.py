"""Credentials in tracking URIs: kept out of every message, decoded for sending.

A URI may carry ``user:password@`` (RFC 3986 userinfo, percent-encoded). Any message that
names a URI passes it through :func:`redact_uri` first, including URIs that are not
valid (an unsupported scheme, say), since that is when they end up in error messages.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

# [scheme:]//userinfo@ , or a bare userinfo@host: the userinfo is what precedes the last
# "@" of the authority (which ends at the first "/", "?" or "#"), as urllib.parse reads it.
_AUTHORITY = re.compile(r"^(?P<head>(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//)?(?P<authority>[^/?#]*)")


def redact_uri(uri: object) -> str:
    """``uri`` with the password (or a userinfo without a colon, often a token) shown as
    ``***``; the user name is kept, so that the message still says who connected."""
    text = str(uri)
    match = _AUTHORITY.match(text)
    if match is None or "@" not in match["authority"]:
        return text
    userinfo, _, host = match["authority"].rpartition("@")
    user, colon, _password = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{match['head'] or ''}{shown}@{host}{text[match.end():]}"


def without_password(uri: str) -> str:
    """``uri`` with the password of its userinfo removed (the user name kept): the form a
    database URI is shown, and recorded in a spool, in."""
    match = _AUTHORITY.match(uri)
    if match is None or "@" not in match["authority"]:
        return uri
    userinfo, _, host = match["authority"].rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{match['head'] or ''}{user + '@' if user else ''}{host}{uri[match.end():]}"


def with_configured_credentials(uri: str, configured: str | None) -> str:
    """``uri`` as a spool or an upload journal records it (a database's without its
    password, a server's without credentials), given them back by the ``configured``
    tracking URI when that names the same database or server; else ``uri`` unchanged."""
    if configured and configured != uri and uri in (without_password(configured),
                                                    split_credentials(configured)[0]):
        return configured
    return uri


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``uri`` without ``user:password@``, and the user and password it carried,
    percent-decoded (``p%40ss`` is the password ``p@ss``)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri.rstrip("/"), None, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return clean.rstrip("/"), user, password


SQL_URI_PREFIXES = ("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+")
SERVER_URI_PREFIXES = ("http://", "https://")
TRACKING_URI_FORMS = ("sqlite:///path/to/mlflow.db, postgresql://user@host/db, mysql://user@host/db "
                      "(MLflow databases) or http(s)://host:port (an MLflow tracking server)")


def is_sql_uri(uri: str) -> bool:
    """An MLflow database: SQLite, PostgreSQL or MySQL (SQLAlchemy's URL forms)."""
    return uri.startswith(SQL_URI_PREFIXES)


def check_tracking_uri(uri: object) -> str:
    """``uri`` if autolog can log to it, else a :class:`ValueError` that says what can."""
    if isinstance(uri, str) and (is_sql_uri(uri) or uri.startswith(SERVER_URI_PREFIXES)):
        return uri
    if isinstance(uri, str) and (uri.startswith("file:") or "://" not in uri):
        raise ValueError(
            f"tracking URI {redact_uri(uri)!r} looks like an MLflow file store (./mlruns): autolog "
            f"logs to {TRACKING_URI_FORMS}; copy a file store's runs into a database with: "
            f"autolog sync --from {uri if uri.startswith('file:') else 'file:' + uri} "
            "--to sqlite:///mlflow.db")
    raise ValueError(f"tracking URI must be {TRACKING_URI_FORMS}, got {redact_uri(uri)!r}")
