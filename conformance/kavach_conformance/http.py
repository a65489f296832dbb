"""The kit's only way out: an httpx client that talks to allowed origins only and logs every exchange.

Each exchange is kept as one line (method, URL, status, the parameters that matter, the
redirect target) so a failed check, and a shrunk stateful failure, can show exactly what was
sent and answered. Secrets are shortened in the log.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

import attrs
import httpx
from kavach.deadline import Deadline, transport

KEY_PARAMS = (
    "grant_type",
    "response_type",
    "client_id",
    "redirect_uri",
    "resource",
    "scope",
    "code_challenge_method",
    "code",
    "code_verifier",
    "refresh_token",
    "token",
    "token_type_hint",
    "state",
)
KEY_RESPONSE = ("error", "active", "scope", "token_type", "code", "iss", "refresh_token", "aud")


MAX_BYTES = 1 << 20
"""The largest answer the kit reads (a metadata document, a sign-in page): 1 MiB, decoded."""
WINDOW_BITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""The content codings the kit decodes (RFC 9110 §8.4.1), as :func:`zlib.decompressobj` reads each."""


class KitError(Exception):
    """The kit cannot go on (an unreachable server, a refused origin); the message says why."""


class NoAnswer(KitError):
    """The server gave no usable answer: no connection, no (whole) answer in time, one too large, or
    one in a content coding the kit does not read."""


class Stop(KitError):
    """The whole run stops here (exit status 2), whichever check it is in: going on would only repeat it."""


class RateLimited(Stop):
    """The server answered 429: the kit stops (exit status 2) rather than report throttled checks."""


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``; :class:`KitError` when it is not a URL at all."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port out of range raises here
    except (ValueError, TypeError):
        raise KitError(f"{url!r} is not a valid URL") from None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def short(value: object, keep: int = 10) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, int | float) else str(value)
    return text if len(text) <= keep + 3 else text[:keep] + "..."


def basic_auth(client_id: str, secret: str) -> httpx.BasicAuth:
    """HTTP Basic client authentication as RFC 6749 §2.3.1 has it: the client identifier and the
    secret each form-urlencoded (``+``, ``%``, ``:`` ... escaped) before they are joined and base64-encoded."""
    return httpx.BasicAuth(quote_plus(client_id, safe=""), quote_plus(secret, safe=""))


def decoded(raw: Iterable[bytes], coding: str, limit: int) -> Iterator[bytes]:
    """The body sent as ``raw`` in the Content-Encoding ``coding`` (RFC 9110 §8.4), decoded a chunk at
    a time, never more than ``limit + 1`` bytes at once: a few kB of gzip may decode to gigabytes,
    and httpx inflates each chunk it reads whole. ``identity``, one ``gzip`` and one ``deflate`` are
    read; stacked or other codings (the kit asks for ``identity`` only) raise :class:`NoAnswer`."""
    codings = [c.strip().lower() for c in coding.split(",") if c.strip().lower() not in ("", "identity")]
    if not codings:
        yield from raw
        return
    if len(codings) > 1 or codings[0] not in WINDOW_BITS:
        if any(raw):  # an empty body (a 204, say) needs no decoding
            what = f"answer in Content-Encoding {coding!r}"
            raise NoAnswer(f"{what}, which the kit does not decode (it asks for identity)")
        return
    inflater = zlib.decompressobj(WINDOW_BITS[codings[0]])
    try:
        for data in raw:
            while data and not inflater.eof:  # anything after the end is not read (nor kept)
                yield inflater.decompress(data, limit + 1)
                data = inflater.unconsumed_tail
            if inflater.eof:
                return
        yield inflater.flush()
    except zlib.error as exc:
        raise NoAnswer(f"answer not readable as {codings[0]}: {exc}") from None


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME = re.compile(_TOKEN)
_PARAM = re.compile(rf'({_TOKEN})[ \t]*=[ \t]*(?:({_TOKEN})|"((?:[^"\\]|\\.)*)")')
"""``auth-param = token BWS "=" BWS ( token / quoted-string )`` (RFC 9110 §11.2)."""
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_SPACE = re.compile(r"[ \t]+")
_END = re.compile(r"[ \t]*(?:,|$)")
"""The end of one element of a list (RFC 9110 §5.6.1)."""
_QUOTED_PAIR = re.compile(r"\\(.)")


def _next_element(header: str, pos: int) -> int:
    """``pos`` moved past the spaces and (empty) list elements there."""
    while pos < len(header) and header[pos] in " \t,":
        pos += 1
    return pos


def challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """The challenges of a ``WWW-Authenticate`` field (RFC 9110 §11.6.1: a list of them, in one field
    line or several, joined by ", "), each ``(scheme, parameters)``: the scheme in lowercase, its
    auth-params by lowercase name with token or quoted-string values (quoted-pairs unescaped), a
    token68 under ``""`` (§11.2). Reading stops at the first element that is none of these."""
    found: list[tuple[str, dict[str, str]]] = []
    pos = _next_element(header, 0)
    while pos < len(header):
        scheme = _SCHEME.match(header, pos)
        if scheme is None:
            break
        params: dict[str, str] = {}
        found.append((scheme.group().lower(), params))
        pos = scheme.end()
        space = _SPACE.match(header, pos)
        token68 = _TOKEN68.match(header, space.end()) if space else None
        if space and token68 and _END.match(header, token68.end()) and not _PARAM.match(header, space.end()):
            params[""] = token68.group()
            pos = token68.end()
        elif space:
            pos = space.end()
            while (param := _PARAM.match(header, pos)) is not None:
                end = _END.match(header, param.end())
                if end is None:
                    return found
                name, token, quoted = param.groups()
                params.setdefault(name.lower(), token if quoted is None else _QUOTED_PAIR.sub(r"\1", quoted))
                pos = _next_element(header, end.end())
            if params:
                continue  # the next challenge, if any, starts at pos
        end = _END.match(header, pos)
        if end is None:
            break
        pos = _next_element(header, end.end())
    return found


def parse_json(response: httpx.Response) -> Any:
    """The answer's JSON (RFC 8259); :class:`ValueError` when it is not JSON the kit can read.

    Python's decoder recurses once per nesting level, so a deeply nested document (``[[[[...``,
    far under the 1 MiB limit) raises :class:`RecursionError`: that is unreadable JSON too."""
    try:
        return response.json()
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


@attrs.define
class Exchange:
    method: str
    url: str
    status: int
    sent: dict[str, str]
    answered: dict[str, str]
    location: str | None = None

    def line(self) -> str:
        sent = " ".join(f"{k}={v}" for k, v in self.sent.items())
        got = " ".join(f"{k}={v}" for k, v in self.answered.items())
        loc = f" -> {self.location}" if self.location else ""
        return f"{self.method} {self.url} [{sent}] => {self.status}{loc} {got}".rstrip()


def _summarise(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in KEY_PARAMS:
            secret = key in ("code", "code_verifier", "refresh_token", "token")
            out[key] = short(value) if secret else value
    return out


class Http:
    """A recording client limited to ``allowed`` origins; it never follows redirects."""

    def __init__(self, allowed: Iterable[str], *, timeout: float = 15.0, max_bytes: int = MAX_BYTES) -> None:
        self.allowed = {origin(u) for u in allowed}
        self.timeout = timeout
        """Seconds for a whole exchange: connecting, the answer's head and its whole body."""
        self.max_bytes = max_bytes
        self.deadline = Deadline()
        self.client = self.new_client()
        self.log: list[Exchange] = []

    def new_client(self) -> httpx.Client:
        """A client of its own (a browser's cookie jar, say) keeping to the same per-exchange deadline:
        every connect, read and write of an exchange ends by it (:mod:`kavach.deadline`)."""
        bounded = transport(self.deadline)
        return httpx.Client(follow_redirects=False, timeout=self.timeout, transport=bounded, trust_env=False)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mark(self) -> int:
        return len(self.log)

    def since(self, mark: int) -> list[str]:
        return [e.line() for e in self.log[mark:]]

    def check_allowed(self, url: str) -> None:
        if origin(url) not in self.allowed:
            raise KitError(f"refusing to contact {url}: not one of the servers given ({sorted(self.allowed)})")

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        data: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        cookies: httpx.Cookies | None = None,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        self.check_allowed(url)
        sent_pairs: list[tuple[str, str]] = []
        if params is not None:
            sent_pairs += list(params.items()) if isinstance(params, Mapping) else list(params)
        if data is not None:
            sent_pairs += list(data.items()) if isinstance(data, Mapping) else list(data)
        kwargs: dict[str, Any] = {"headers": dict(headers or {})}
        kwargs["headers"].setdefault("Accept-Encoding", "identity")  # no compressed answers (see decoded)
        if params is not None:
            kwargs["params"] = list(params.items()) if isinstance(params, Mapping) else list(params)
        if data is not None:
            kwargs["content"] = urlencode(list(data.items()) if isinstance(data, Mapping) else list(data))
            kwargs["headers"].setdefault("Content-Type", "application/x-www-form-urlencoded")
        if json_body is not None:
            kwargs["content"] = json.dumps(json_body)
            kwargs["headers"].setdefault("Content-Type", "application/json")
        http = client or self.client
        started = time.monotonic()
        try:
            request = http.build_request(method, url, **kwargs)
            self.deadline.start(self.timeout)  # from connecting to the answer's last byte
            response = http.send(request, auth=basic_auth(*auth) if auth else None, stream=True)
            try:
                self._read(response, started + self.timeout)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            what = f"no answer within {self.timeout:g} s ({type(exc).__name__})"
            if self.deadline.received:
                what = f"no whole answer within {self.timeout:g} s (still sending)"
            raise NoAnswer(f"{what}: {method} {url.split('?', 1)[0]}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise NoAnswer(f"{type(exc).__name__}: {exc}: {method} {url.split('?', 1)[0]}") from exc
        except NoAnswer as exc:
            raise NoAnswer(f"{exc}: {method} {url.split('?', 1)[0]}") from None
        finally:
            self.deadline.clear()
        self.log.append(self._exchange(method, response, sent_pairs))
        if response.status_code == 429:
            raise RateLimited(f"{method} {url} answered 429: the server rate-limits the kit (try later)")
        return response

    def _read(self, response: httpx.Response, deadline: float) -> None:
        """The body, within the deadline and the size limit (httpx's own timeout is per read). It is
        read as sent and decoded here, so the limit holds for the decoded answer (:func:`decoded`)."""
        chunks: list[bytes] = []
        size = 0
        coding = response.headers.get("content-encoding", "")  # several headers: joined by ", "
        for chunk in decoded(response.iter_raw(), coding, self.max_bytes):
            size += len(chunk)
            if size > self.max_bytes:
                raise NoAnswer(f"answer larger than {self.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise NoAnswer(f"no whole answer within {self.timeout:g} s (still sending)")
            chunks.append(chunk)
        response._content = b"".join(chunks)

    @staticmethod
    def _exchange(method: str, response: httpx.Response, sent: list[tuple[str, str]]) -> Exchange:
        url = str(response.request.url)
        base = url.split("?", 1)[0]
        sent_pairs = sent or parse_qsl(urlsplit(url).query, keep_blank_values=True)
        answered: dict[str, str] = {}
        location = response.headers.get("location")
        if location:
            for key, value in parse_qsl(urlsplit(location).query, keep_blank_values=True):
                if key in KEY_RESPONSE:
                    answered[key] = short(value) if key == "code" else value
            location = location.split("?", 1)[0]
        elif "json" in response.headers.get("content-type", ""):
            try:
                body = parse_json(response)
            except ValueError:
                body = None
            if isinstance(body, dict):
                for key in KEY_RESPONSE:
                    if key in body:
                        value = body[key]
                        text = value if isinstance(value, str) else json.dumps(value)
                        answered[key] = short(text) if key == "refresh_token" else text
                if "access_token" in body:
                    answered["access_token"] = "(issued)"
        return Exchange(method, base, response.status_code, _summarise(sent_pairs), answered, location)
