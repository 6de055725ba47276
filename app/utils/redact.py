"""Credentials out of what is logged, printed or answered: URLs keep their user, host and path, and
lose their password."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def mask_url(url: str) -> str:
    """`redis://:secret@host:6379/0` -> `redis://:***@host:6379/0`. A URL without a password comes
    back as it is; one that does not parse loses everything up to its last '@'."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Unparseable (a bad port, say): keep only what follows the credentials.
        return url.rsplit("@", 1)[-1] if "@" in url else url
    if not password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostinfo}"))
