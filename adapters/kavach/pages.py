"""The built-in login, consent and error pages, rendered in one place for every framework.

Plain HTML forms that work without JavaScript; a label on every field; system fonts; one inline
stylesheet pinned by its SHA-256 in the Content-Security-Policy, and nothing else loaded
(AZ-10). The consent page shows who asks, where the answer goes, each scope with its
description and the resources; it warns when the client is an app on the person's device, one
that only redirects to loopback or to private-use schemes, or when the answer goes to a
private-use scheme (AZ-11; RFC 8252 §7.1, §7.3, §8.6), and offers approve and deny (AZ-12); the sign-in form can
be cancelled, which denies too.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from html import escape
from urllib.parse import urlsplit

from kavach_core.http import Response
from kavach_core.messages.authorization import ConsentView

STYLE = """
:root{color-scheme:light dark;--bg:#f3f4f6;--card:#fff;--text:#111827;--muted:#4b5563;--line:#e5e7eb;
--accent:#1d4ed8;--accent-text:#fff;--warn-bg:#fffbeb;--warn-line:#f59e0b;--warn-text:#78350f;
--bad-bg:#fef2f2;--bad-line:#ef4444;--bad-text:#7f1d1d;--focus:#2563eb}
@media (prefers-color-scheme:dark){:root{--bg:#0b1120;--card:#111827;--text:#f9fafb;--muted:#9ca3af;
--line:#1f2937;--accent:#3b82f6;--warn-bg:#2a1f05;--warn-text:#fde68a;--bad-bg:#2a0b0b;--bad-text:#fecaca}}
*{box-sizing:border-box}
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;padding:24px;
background:var(--bg);color:var(--text);font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{width:100%;max-width:440px;background:var(--card);border:1px solid var(--line);border-radius:14px;
padding:32px;box-shadow:0 10px 30px rgba(0,0,0,.08)}
.brand{display:flex;align-items:center;gap:8px;margin:0 0 20px;color:var(--muted);font-size:14px;
font-weight:600;letter-spacing:.02em}
.mark{display:inline-block;width:22px;height:22px;border-radius:6px;background:var(--accent)}
h1{font-size:22px;line-height:1.3;margin:0 0 8px}
p{margin:0 0 16px}
.muted{color:var(--muted);font-size:14px}
.host{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:14px;
background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:1px 6px;overflow-wrap:anywhere}
label{display:block;font-weight:600;margin:16px 0 6px}
input[type=text],input[type=password]{width:100%;font:inherit;padding:10px 12px;border:1px solid var(--line);
border-radius:8px;background:var(--card);color:var(--text)}
fieldset{border:0;padding:0;margin:20px 0}
legend{font-weight:600;margin-bottom:8px;padding:0}
.scope{display:flex;gap:12px;align-items:flex-start;padding:12px;border:1px solid var(--line);
border-radius:8px;margin:8px 0}
.scope input{margin-top:4px;width:18px;height:18px;flex:none}
.scope label{margin:0;font-weight:400}
.scope strong{display:block}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;color:var(--muted)}
.notice{border-left:4px solid var(--warn-line);background:var(--warn-bg);color:var(--warn-text);
padding:12px 14px;border-radius:8px;margin:16px 0;font-size:15px}
.error{border-left:4px solid var(--bad-line);background:var(--bad-bg);color:var(--bad-text);
padding:12px 14px;border-radius:8px;margin:16px 0;font-size:15px}
.actions{display:flex;gap:12px;margin-top:24px}
button{flex:1;font:inherit;font-weight:600;padding:11px 16px;border-radius:8px;cursor:pointer;
border:1px solid var(--line);background:var(--card);color:var(--text)}
button.primary{background:var(--accent);border-color:var(--accent);color:var(--accent-text)}
button:focus-visible,input:focus-visible{outline:3px solid var(--focus);outline-offset:2px}
button.link{flex:none;display:inline;padding:0;border:0;background:none;color:var(--accent);
font-weight:400;text-decoration:underline}
.switch{margin:16px 0 0}
.label{font-weight:600;margin:20px 0 8px}
ul.resources{padding-left:20px;margin:0 0 16px}
footer{margin-top:24px;color:var(--muted);font-size:13px}
""".strip()

STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")


def page_headers(*, forms_leave: bool = False) -> tuple[tuple[str, str], ...]:
    """Headers of every page (AZ-10): no framing, no referrer, no caching, nothing loaded from
    elsewhere, and forms that post to this server only (``form-action 'self'``).

    ``forms_leave``: the page's form answer may lead off this server (Deny, Approve, Cancel on the
    sign-in form), so it gets no ``form-action``.
    Browsers check ``form-action`` on every redirect that follows a form submission, those the next
    site sends included (CSP3 §6.4.2), so the consent form, whose 303 goes to the client, which may
    send the browser on anywhere (a native tool's loopback listener to its hosted "signed in" page,
    an ``identify`` application to its single sign-on), could name no list of them that holds.
    """
    form_action = "" if forms_leave else "form-action 'self'; "
    csp = (
        f"default-src 'none'; style-src '{STYLE_HASH}'; img-src 'self'; {form_action}"
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return (
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Security-Policy", csp),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Content-Type-Options", "nosniff"),
        ("Cache-Control", "no-store"),
        ("Pragma", "no-cache"),
    )


def _document(title: str, body: str) -> bytes:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f'<body><main>\n<p class="brand"><span class="mark" aria-hidden="true"></span>kavachOS</p>\n{body}\n'
        "</main></body></html>\n"
    ).encode()


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'


def page(
    status: int, title: str, body: str, *, headers: Iterable[tuple[str, str]] = (), forms_leave: bool = False
) -> Response:
    return Response(status, (*page_headers(forms_leave=forms_leave), *headers), _document(title, body))


def login_page(
    *,
    action: str,
    ticket: str,
    csrf: str,
    client_name: str,
    username: str = "",
    error: str | None = None,
    status: int = 200,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """The sign-in form; it posts to ``action`` and continues to consent for ``ticket``.

    Sign in comes first, so Enter in a field signs in (the form's default button, HTML §4.10.21.2);
    Cancel (``decision=deny``, sent without the fields' ``required`` checks) refuses the request
    without signing in (AZ-12): the client hears ``access_denied``. So this form's answer may
    lead off this server too, and the page has no ``form-action`` (:func:`page_headers`)."""
    alert = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (
        "<h1>Sign in</h1>"
        f'<p class="muted">to continue to <strong>{escape(client_name)}</strong></p>{alert}'
        f'<form method="post" action="{escape(action)}">'
        f"{_hidden('ticket', ticket)}{_hidden('csrf_token', csrf)}"
        '<label for="username">Username</label>'
        f'<input type="text" id="username" name="username" value="{escape(username)}" autocomplete="username"'
        ' autocapitalize="none" spellcheck="false" required autofocus>'
        '<label for="password">Password</label>'
        '<input type="password" id="password" name="password" autocomplete="current-password" required>'
        '<div class="actions"><button type="submit" class="primary">Sign in</button>'
        '<button type="submit" name="decision" value="deny" formnovalidate>Cancel</button></div>'
        "</form>"
    )
    return page(status, "Sign in", body, headers=headers, forms_leave=True)


def consent_page(
    view: ConsentView,
    *,
    action: str,
    ticket: str,
    csrf: str,
    subject: str,
    headers: Iterable[tuple[str, str]] = (),
    switch_account: bool = False,
) -> Response:
    """The decision (AZ-11, AZ-12); the ticked scopes are sent as ``scope`` fields.

    ``switch_account`` (built-in sign-in only) adds a third answer, ``decision=switch``: not
    this person, so sign this browser out and ask again who it is, the request kept."""
    name = escape(view.client_name)
    host = f'<span class="host">{escape(view.redirect_host)}</span>'
    # RFC 8252 §7.1: a private-use scheme reaches whichever app claims it, not a host.
    destination = f"the application on this computer that opens {host} links" if view.private_use else host
    on_device = view.loopback_only or view.on_device or view.private_use
    warnings = []
    if on_device:
        how = (
            f"Any application can claim {host} links, so kavachOS cannot check who made it."
            if view.private_use
            else "It only returns to a local address, so kavachOS cannot check who made it."
        )
        warnings.append(
            f'<p class="notice" role="note"><strong>{name} runs on a computer, not a website.</strong> {how} '
            "Approve only if you started this application yourself just now.</p>"
        )
    if view.client_kind == "document":
        # CM-01, AZ-11: the name comes from the client's own document; only its host is known.
        publisher = escape(urlsplit(view.client_id).hostname or view.client_id)
        warnings.append(
            '<p class="notice" role="note">This application describes itself in a document published by '
            f'<span class="host">{publisher}</span>. Its name is not verified; approve only if you trust '
            f'<span class="host">{publisher}</span>.</p>'
        )
    if view.client_kind == "dynamic" and not on_device:
        warnings.append(
            '<p class="notice" role="note">This application registered itself. Its name is not verified; '
            f"make sure you trust {host}.</p>"
        )
    scopes = []
    for index, scope in enumerate(view.scopes):
        sid = f"scope-{index}"
        text = escape(scope.description or scope.scope)
        scopes.append(
            f'<div class="scope"><input type="checkbox" id="{sid}" name="scope" value="{escape(scope.scope)}" checked>'
            f'<label for="{sid}"><strong>{text}</strong><code>{escape(scope.scope)}</code></label></div>'
        )
    scope_block = (
        f"<fieldset><legend>It will be able to</legend>{''.join(scopes)}</fieldset>"
        if scopes
        else "<p>It asks for no permissions beyond knowing it is you.</p>"
    )
    items = []
    for uri, label in zip(view.resources, view.resource_names, strict=False):
        shown = f' <span class="host">{escape(uri)}</span>' if label and label != uri else ""
        items.append(f"<li>{escape(label or uri)}{shown}</li>")
    resources = "".join(items)
    body = (
        f"<h1>{name} wants to access your account</h1>"
        f"<p>After you answer you will be sent to {destination}.</p>"
        f"{''.join(warnings)}"
        f'<form method="post" action="{escape(action)}">'
        f"{_hidden('ticket', ticket)}{_hidden('csrf_token', csrf)}"
        f"{scope_block}"
        f'<p class="label">On</p><ul class="resources">{resources}</ul>'
        '<div class="actions">'
        '<button type="submit" name="decision" value="deny">Deny</button>'
        '<button type="submit" name="decision" value="approve" class="primary">Approve</button>'
        "</div>"
        f"{_switch(subject) if switch_account else ''}"
        "</form>"
        f"<footer>Signed in as <strong>{escape(subject)}</strong>. "
        f"Client id <code>{escape(view.client_id)}</code></footer>"
    )
    return page(200, f"Authorize {view.client_name}", body, headers=headers, forms_leave=True)


def _switch(subject: str) -> str:
    """The consent form's way out for someone signed in as another person (a shared computer)."""
    return (
        f'<p class="muted switch">Not {escape(subject)}? '
        '<button type="submit" name="decision" value="switch" class="link">Sign in as someone else</button></p>'
    )


def error_page(
    status: int,
    error: str,
    description: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    back: str | None = None,
    back_to: str | None = None,
) -> Response:
    """An error shown to the person, never a redirect (AZ-02). With ``back`` (an error of a client
    kavachOS does not redirect to on its own, RFC 9700 §4.11.2), a link taking the error to the
    client at ``back_to``, which the person follows only if they came from there."""
    if back is None:
        after = "<p>Return to the application and try again. You can close this window.</p>"
    else:
        where = escape(back_to or "the application")
        after = (
            f'<p>If you came here from the application at <span class="host">{where}</span>, '
            f'<a href="{escape(back)}">return to {where}</a> to tell it. '
            "If you do not know this site, close this window.</p>"
        )
    body = (
        "<h1>This request cannot continue</h1>"
        f'<p class="error" role="alert">{escape(description)}</p>'
        f'<p class="muted">Error code: <code>{escape(error)}</code></p>'
        f"{after}"
    )
    return page(status, "Authorization error", body, headers=headers)
