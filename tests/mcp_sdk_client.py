"""The official MCP Python SDK client wired the way an application wires it, for interop tests.

Shared by test_mcp_python_client.py (discovery, registration, step-up, refresh, the proxy) and
test_cimd.py (a client identified by its client ID metadata document URL). The SDK client is
``mcp.Client`` over ``streamable_http_client`` with the SDK's ``OAuthClientProvider``; the test
plays only the person, through :class:`ChoosyPerson`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import attrs
import httpx
import httpx2
from kavach_serve import Served, serve
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from person import Form, Person

PASSWORD = "correct horse battery staple"
REDIRECT_URI = "http://127.0.0.1:45999/callback"
FLOW_TIMEOUT = 90


def person_password() -> str:
    return PASSWORD


class MemoryStorage:
    """The SDK's ``TokenStorage``, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class ChoosyPerson(Person):
    """A person who, at consent, leaves ticked only the scopes in ``grant`` (``None``: all)."""

    grant: set[str] | None = None

    def _submit(self, page_url: str, form: Form, decision: str) -> httpx.Response:
        if self.grant is not None and "scope" in form.names:
            form = attrs.evolve(form, fields=[(k, v) for k, v in form.fields if k != "scope" or v in self.grant])
        return super()._submit(page_url, form, decision)


@attrs.define
class Seen:
    """Every HTTP exchange the SDK client made, in order."""

    exchanges: list[tuple[str, str, int, dict[str, str]]] = attrs.Factory(list)
    authorizations: list[str] = attrs.Factory(list)
    """Authorization URLs the SDK sent the person to."""

    def paths(self) -> list[tuple[str, str, int]]:
        return [(m, p, s) for m, p, s, _ in self.exchanges]

    def token_grants(self) -> list[str]:
        return [h.get("grant_type", "") for m, p, _, h in self.exchanges if m == "POST" and p == "/token"]


class SdkClient:
    """The SDK's pieces wired the way an application wires them, plus the person and a recorder."""

    def __init__(self, mcp_url: str, person: ChoosyPerson, *, client_metadata_url: str | None = None) -> None:
        self.mcp_url = mcp_url
        self.person = person
        self.storage = MemoryStorage()
        self.seen = Seen()
        self._result: dict[str, str] = {}
        metadata = OAuthClientMetadata(
            client_name="kavachOS test (MCP Python SDK)",
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        )
        self.provider = OAuthClientProvider(
            mcp_url, metadata, self.storage, self._redirect, self._callback, client_metadata_url=client_metadata_url
        )

    async def _redirect(self, url: str) -> None:
        self.seen.authorizations.append(url)
        final = await anyio.to_thread.run_sync(self.person.authorize, url)
        self._result = {k: v[0] for k, v in parse_qs(urlsplit(final).query).items()}

    async def _callback(self) -> AuthorizationCodeResult:
        result, self._result = self._result, {}
        if "code" not in result:
            raise AssertionError(f"the authorization ended without a code: {result}")
        return AuthorizationCodeResult(code=result["code"], state=result.get("state"), iss=result.get("iss"))

    async def _on_response(self, response: httpx2.Response) -> None:
        request = response.request
        form: dict[str, str] = {}
        if request.method == "POST" and request.url.path == "/token":
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.seen.exchanges.append((request.method, request.url.path, response.status_code, form))

    async def run(self, body: Callable[[Client], Awaitable[Any]]) -> Any:
        with anyio.fail_after(FLOW_TIMEOUT):
            async with (
                httpx2.AsyncClient(
                    auth=self.provider, timeout=30, event_hooks={"response": [self._on_response]}
                ) as http,
                Client(streamable_http_client(self.mcp_url, http_client=http)) as client,
            ):
                return await body(client)


def served_with_user(**kwargs: Any) -> Any:
    """``serve(...)`` with the user ``alice`` (password :data:`PASSWORD`)."""
    return _ServedWithUser(**kwargs)


class _ServedWithUser:
    """``serve(...)`` with the user ``alice`` created through ``kavach users add --password-stdin``."""

    def __init__(self, **kwargs: Any) -> None:
        self._cm = serve(**kwargs)

    def __enter__(self) -> Served:
        served = self._cm.__enter__()
        served.add_user("alice", PASSWORD)
        return served

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)
