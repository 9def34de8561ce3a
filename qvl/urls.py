"""URLs fit for a message or a log line: passwords never shown."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

REDIS_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """``url`` fit for a message or a log line: its password (and any ``password=``
    parameter) replaced by ``***``. A user name alone is kept, except in a Redis URL,
    where ``redis://SECRET@host`` is how people often (mis)write the password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or not parts.scheme or "://" not in url:
        # Not a URL we can take apart: hide whatever precedes an '@'.
        return re.sub(r"^([^@]*?://)?[^@]*@", lambda m: f"{m.group(1) or ''}***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:***"
        elif parts.scheme in REDIS_SCHEMES:
            userinfo = "***"
        netloc = f"{userinfo}@{host}"
    head = f"{parts.scheme}://"
    rest = url[len(head) + len(parts.netloc):] if url.lower().startswith(head) else url.split("://", 1)[1]
    rest = re.sub(r"(?i)([?&](?:password|passwd|pwd)=)[^&#]*", r"\1***", rest)
    return f"{url[:len(head)]}{netloc}{rest}"
