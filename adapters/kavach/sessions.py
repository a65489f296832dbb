"""The login session cookie, the browser cookie and CSRF tokens of the built-in pages.

- The session cookie holds the subject, an expiry, the stamp of the account's credential when
  it signed in (:meth:`kavach.users.Users.session_stamp`) and, under an http issuer only, the
  binding to one consent ticket described below, signed with HMAC-SHA256 under a
  key derived from ``config.secret``; it is ``HttpOnly``, ``SameSite=Lax`` and, under an https
  issuer, ``Secure`` with the ``__Host-`` prefix and ``Path=/`` (RFC 6265bis §4.1.3.2). The server
  checks the signature and expiry first (:meth:`Cookies.session`, no store read), then that the
  account still has that credential (:meth:`Session.holds`): removing a user or changing the
  password ends their sessions (OWASP ASVS 5.0 §7.4.1). Each session also has a random id; signing
  out records its hash in the store as ended (``kavach_core.effects.EndSession``) until the cookie
  would have expired, so a copy of the cookie kept elsewhere stops working too (ASVS 5.0 §7.4.1).
  Cookies of older formats (key labels ``v1``, ``v2``) fail the signature check: signed out.
- Under an http issuer (no ``__Host-`` prefix, no ``Secure``) browsers send a host's cookies to
  every port of it (RFC 6265 §8.5): any listener on the issuer's host, a native client's loopback
  redirect target above all (RFC 8252 §7.3), receives them as soon as the browser is sent to it
  under the cookies' ``Path``, whether by that listener's own redirect onward from its redirect
  URI or by a local process opening such a URL at any time. The ``Path`` (the authorization
  endpoint's, which every page that reads the cookies is under) keeps them from the rest of the
  host, but that listener picks its own path, so it is no boundary. There a session is therefore
  good for one authorization only:

  - the signed cookie also carries a keyed digest of the consent ticket it signed in for (never
    the ticket itself), and with any other ticket it signs no one in (:meth:`Cookies.serves`):
    cookies taken while a request is pending cannot start and approve another one;
  - every redirect away from kavach ends it, recorded in the store as ended and cleared, whatever
    the target (:meth:`Cookies.reach`, used by ``kavach.server``): any page can send the browser
    on to a URL the cookies reach, so cookies taken after the answer sign no one in either.

  Each authorization thus asks for the password again. Under https neither applies: the binding
  is absent, and a session serves every authorization until it expires or signs out.
- The browser cookie is a random id that every CSRF token is bound to, so a token lifted from
  one browser is useless in another; each token is also bound to its form and consent ticket
  (AZ-10). Signing in replaces the id, so the tokens of forms served before it stop working.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

import attrs

from kavach_core.config import Config
from kavach_core.opaque import b64url, b64url_decode

SESSION_COOKIE = "kavach-session"
BROWSER_COOKIE = "kavach-browser"
MAX_COOKIE = 4096


def parse_cookies(headers: Iterable[str]) -> dict[str, str]:
    """Name -> value from ``Cookie`` header values; the first occurrence of a name wins."""
    out: dict[str, str] = {}
    for header in headers:
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name and name not in out:
                out[name] = value.strip().strip('"')
    return out


@attrs.frozen
class Session:
    """What a session cookie with a valid signature, not yet expired, says."""

    subject: str
    stamp: str
    """The credential stamp the account had when this session signed in."""
    session_hash: str
    """SHA-256 of the session's random id (hex): what the store records when it ends."""
    expires_at: int
    ticket_digest: str = ""
    """Under an http issuer, the keyed digest of the consent ticket this session signed in for
    (:meth:`Cookies.serves`); empty under https, where a session is not bound to one ticket."""

    def holds(self, current: str | None) -> bool:
        """Whether the account still has the credential this session signed in with; ``current``
        is its stamp now, ``None`` when the account is gone. Constant-time (GN-02)."""
        return current is not None and hmac.compare_digest(self.stamp.encode("utf-8"), current.encode("utf-8"))


class Cookies:
    """Signing, naming and formatting of the pages' cookies for one configuration."""

    def __init__(self, config: Config, *, session_lifetime: int = 8 * 3600) -> None:
        self.secure = config.issuer.startswith("https:")
        prefix = "__Host-" if self.secure else ""
        self.session_name = prefix + SESSION_COOKIE
        self.browser_name = prefix + BROWSER_COOKIE
        self.path = "/" if self.secure else config.issuer_path + config.paths.authorization
        """Where the browser sends the cookies: ``/`` (required by ``__Host-``), else the pages' own path."""
        self.session_lifetime = session_lifetime
        self._session_key = hmac.new(config.secret, b"kavach adapter: login session v3", hashlib.sha256).digest()
        self._ticket_key = hmac.new(config.secret, b"kavach adapter: session ticket v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(config.secret, b"kavach adapter: csrf v1", hashlib.sha256).digest()

    # -- Set-Cookie -------------------------------------------------------------------

    def set_cookie(self, name: str, value: str, max_age: int) -> tuple[str, str]:
        attrs = f"{name}={value}; Path={self.path}; Max-Age={max_age}; HttpOnly; SameSite=Lax"
        if self.secure:
            attrs += "; Secure"
        return ("Set-Cookie", attrs)

    def reach(self, url: str) -> bool:
        """Whether a browser sent to ``url``, a redirect away from kavach (a client's
        ``redirect_uri``, with a code or an error, or an application's login page), may then hand
        these cookies to someone other than kavach, so that the session must end first: under an
        http issuer always, whatever ``url`` is; never under https.

        Under http the cookies go to every port of the issuer's host (RFC 6265 §8.5), and the
        page at ``url``, on any host, can send the browser straight on to a URL there under
        :attr:`path` (a native client's loopback listener, RFC 8252 §7.3, is on that host
        already), which then receives them; which URLs the cookies reach directly is thus beside
        the point. Ending the session there (``kavach.server``, at every such redirect) leaves
        such a listener cookies that sign no one in. Under https they are ``__Host-`` and
        ``Secure`` (RFC 6265bis §4.1.3.2): only a server of the issuer's own host name, with a
        certificate for it, receives them, so the session lasts across authorizations."""
        return not self.secure

    # -- the login session --------------------------------------------------------------

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._session_key, payload, hashlib.sha256).digest()

    def _ticket_digest(self, ticket: str) -> str:
        """What a session bound to consent ticket ``ticket`` carries: an HMAC of it under a key of
        its own, so the cookie never discloses the ticket (the handle of a pending request) nor
        a plain hash of it that a guess could be checked against."""
        return b64url(hmac.new(self._ticket_key, ticket.encode("utf-8"), hashlib.sha256).digest())

    def session_cookie(
        self, subject: str, stamp: str, now: int, session_id: bytes, ticket: str | None = None
    ) -> tuple[str, str]:
        """The ``Set-Cookie`` header that signs ``subject`` in until ``now + session_lifetime``,
        for as long as the account's credential keeps ``stamp`` and the session, whose random id is
        ``session_id`` (16 bytes or more), is not ended. Under an http issuer it signs them in for
        consent ticket ``ticket`` only (:meth:`serves`; without a ticket, for none); under https
        ``ticket`` is not recorded."""
        if len(session_id) < 16:
            raise ValueError("a session id has 16 random bytes or more")
        fields: tuple[str, ...] = (
            str(now + self.session_lifetime),
            b64url(subject.encode("utf-8")),
            b64url(stamp.encode("utf-8")),
            b64url(session_id),
        )
        if not self.secure and ticket:
            fields += (self._ticket_digest(ticket),)
        payload = ":".join(fields).encode("ascii")
        value = f"{b64url(payload)}.{b64url(self._mac(payload))}"
        return self.set_cookie(self.session_name, value, self.session_lifetime)

    def clear_session(self) -> tuple[str, str]:
        return self.set_cookie(self.session_name, "", 0)

    def session(self, cookies: dict[str, str], now: int) -> Session | None:
        """The session the cookie signs in, or ``None`` when it is missing, forged, expired or of
        an older format. Whether it still holds is the caller's question (:meth:`Session.holds`)."""
        value = cookies.get(self.session_name)
        if not value or len(value) > MAX_COOKIE:
            return None
        try:
            payload_text, mac_text = value.split(".")
            payload, mac = b64url_decode(payload_text), b64url_decode(mac_text)
            if not hmac.compare_digest(mac, self._mac(payload)):
                return None
            fields = payload.decode("ascii").split(":")
            expiry_text, subject_text, stamp_text, id_text = fields[:4]
            (ticket_digest,) = fields[4:] or ("",)  # more than five fields: ValueError
            subject = b64url_decode(subject_text).decode("utf-8")
            stamp = b64url_decode(stamp_text).decode("utf-8")
            session_hash = hashlib.sha256(b64url_decode(id_text)).hexdigest()
            expiry = int(expiry_text)
        except (ValueError, UnicodeDecodeError):
            return None
        if now < expiry and subject and stamp:
            return Session(subject, stamp, session_hash, expiry, ticket_digest)
        return None

    def serves(self, session: Session, ticket: str) -> bool:
        """Whether ``session`` may sign the person in for consent ticket ``ticket``: under an
        http issuer only when it signed in for that very ticket (constant-time, GN-02), since
        there any listener on the issuer's host may hold a copy of the cookies (see the module's
        notes; RFC 6265 §8.5); always under https, where the binding is absent and not read."""
        if self.secure:
            return True
        expected = self._ticket_digest(ticket)
        return bool(session.ticket_digest) and hmac.compare_digest(expected, session.ticket_digest)

    # -- the browser id and CSRF tokens -----------------------------------------------------

    def browser_id(self, cookies: dict[str, str]) -> tuple[str, tuple[str, str] | None]:
        """This browser's id, with the ``Set-Cookie`` header to send when it is new."""
        value = cookies.get(self.browser_name, "")
        if 32 <= len(value) <= 64 and value.isascii() and value.replace("-", "").replace("_", "").isalnum():
            return value, None
        return self.new_browser_id()

    def new_browser_id(self) -> tuple[str, tuple[str, str]]:
        """A new random browser id and the ``Set-Cookie`` header that gives it to the browser: at
        first sight, and at each sign-in, so no CSRF token made before it (say, for an id an
        attacker planted or read) is accepted after it (OWASP CSRF Prevention: renew on sign-in)."""
        fresh = secrets.token_urlsafe(32)
        return fresh, self.set_cookie(self.browser_name, fresh, 400 * 86400)

    def csrf_token(self, browser_id: str, form: str, ticket: str) -> str:
        """The token a form of kind ``form`` for ``ticket`` carries in this browser."""
        msg = "\0".join((browser_id, form, ticket)).encode("utf-8")
        return b64url(hmac.new(self._csrf_key, msg, hashlib.sha256).digest())

    def csrf_valid(self, cookies: dict[str, str], form: str, ticket: str, token: str | None) -> bool:
        """Constant-time check of a submitted token against this browser's cookie (AZ-10)."""
        browser = cookies.get(self.browser_name)
        if not browser or not token:
            return False
        expected = self.csrf_token(browser, form, ticket)
        return hmac.compare_digest(expected.encode("ascii"), token.encode("utf-8", "replace"))
