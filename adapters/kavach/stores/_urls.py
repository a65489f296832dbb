"""Store URLs: the query parameters kavach reads itself, taken out before a driver sees the URL."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit


def take_parameters(url: str, names: tuple[str, ...], omitted: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The URL left for the driver once the query parameters ``names`` are out of it, and their values.

    Only the query is rewritten (its other parameters re-escaped with ``%20``, never ``+``, which
    libpq would keep); the scheme, authority and path stay as written. So a URL whose authority is
    empty keeps its ``//``: ``unix:///run/redis.sock`` or ``postgresql:///db?host=/run/postgresql``,
    which taking the URL apart and putting it together again would write ``unix:/run/redis.sock``,
    a URL neither driver reads. Each parameter may be given once, and not empty: ``ValueError``
    otherwise, naming it and saying what leaving it out means (``omitted``, by name).
    """
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    taken: dict[str, str] = {}
    for name in names:
        given = [value for key, value in query if key == name]
        if len(given) > 1 or given == [""]:
            raise ValueError(f"the store URL's {name} must be given once and not empty ({omitted[name]})")
        if given:
            taken[name] = given[0]
    if not taken:
        return url, taken
    rest = urlencode([(key, value) for key, value in query if key not in taken], quote_via=quote)
    head = url.partition("?")[0]  # a query was given, so the first "?" starts it, before any "#"
    mark, fragment = url.partition("#")[1:]
    return head + ("?" + rest if rest else "") + mark + fragment, taken
