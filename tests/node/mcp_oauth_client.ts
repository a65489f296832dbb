// An MCP client built only from the official TypeScript SDK (@modelcontextprotocol/sdk), used by
// tests/test_mcp_ts_client.py to prove that a client nobody on this team wrote can use a
// kavachOS-protected MCP server given nothing but its URL.
//
// Usage: node mcp_oauth_client.ts <mcp-url>
//
// What it does, in order (each step is reported as one JSON line on stdout):
//   1. listens for the authorization response on http://127.0.0.1:<free port>/callback;
//   2. connects: the SDK meets the 401 challenge, reads the protected resource metadata and the
//      authorization server metadata, registers dynamically and builds the authorization URL;
//   3. hands that URL to whoever plays the person ({"event": "authorize", "url": ...}) and waits
//      for the code on its redirect URI; checks `state` and the RFC 9207 `iss`; finishes auth;
//   4. lists the tools and calls MCP_ALLOWED_TOOL;
//   5. calls MCP_STEP_UP_TOOL, which the first grant does not cover: 403 insufficient_scope; the
//      SDK asks for the challenged scope, the person approves again, the call succeeds;
//   6. waits for the access token to expire, calls MCP_STEP_UP_TOOL again: 401, the SDK redeems
//      the refresh token, the call succeeds without the person.
// The last line is {"event": "result", ...} with what was observed; the exit status is 0 when
// every step passed.
//
// Environment: MCP_ALLOWED_TOOL (default "echo"), MCP_STEP_UP_TOOL (default "add"),
// MCP_CLIENT_TIMEOUT_MS (default 60000): how long to wait for each authorization response.

import http from "node:http";
import type { AddressInfo } from "node:net";
import { randomBytes } from "node:crypto";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";
import type { OAuthClientProvider, OAuthDiscoveryState } from "@modelcontextprotocol/sdk/client/auth.js";
import type {
  OAuthClientInformationMixed,
  OAuthClientMetadata,
  OAuthTokens,
} from "@modelcontextprotocol/sdk/shared/auth.js";
import type { FetchLike } from "@modelcontextprotocol/sdk/shared/transport.js";

type Json = Record<string, unknown>;

function emit(event: string, data: Json = {}): void {
  process.stdout.write(JSON.stringify({ event, ...data }) + "\n");
}

class StepFailed extends Error {}

function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new StepFailed(message);
}

// -- the redirect URI: a loopback listener (RFC 8252 §7.3) --------------------------------

interface AuthorizationResponse {
  code: string;
  state: string | null;
  iss: string | null;
}

class CallbackListener {
  private server = http.createServer((req, res) => this.handle(req, res));
  private waiting: { resolve: (r: AuthorizationResponse) => void; reject: (e: Error) => void } | null = null;
  port = 0;

  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(0, "127.0.0.1", () => resolve());
    });
    this.port = (this.server.address() as AddressInfo).port;
  }

  get redirectUri(): string {
    return `http://127.0.0.1:${this.port}/callback`;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? "/", this.redirectUri);
    if (url.pathname !== "/callback") {
      res.writeHead(404).end();
      return;
    }
    const error = url.searchParams.get("error");
    const code = url.searchParams.get("code");
    res.writeHead(200, { "content-type": "text/plain" }).end("You may close this page.");
    const waiting = this.waiting;
    this.waiting = null;
    if (!waiting) return;
    if (error || !code) {
      waiting.reject(new StepFailed(`authorization response carried error=${error} (code present: ${!!code})`));
      return;
    }
    waiting.resolve({ code, state: url.searchParams.get("state"), iss: url.searchParams.get("iss") });
  }

  next(timeoutMs: number): Promise<AuthorizationResponse> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        reject(new StepFailed(`no authorization response within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting = {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  close(): void {
    this.server.close();
    this.server.closeAllConnections();
  }
}

// -- the OAuthClientProvider: in-memory, one session ----------------------------------------

class MemoryProvider implements OAuthClientProvider {
  private client: OAuthClientInformationMixed | undefined;
  private saved: OAuthTokens | undefined;
  private verifier = "";
  private discovery: OAuthDiscoveryState | undefined;
  lastState = "";
  registrations = 0;
  tokenSaves = 0;
  authorizationUrls: URL[] = [];
  /** Set by the observing fetch when the resource answers 403 insufficient_scope. */
  stepUpPending = false;
  onAuthorizationUrl: (url: URL) => void = () => {};

  private readonly redirect: string;

  constructor(redirect: string) {
    this.redirect = redirect;
  }

  get redirectUrl(): string {
    return this.redirect;
  }

  get clientMetadata(): OAuthClientMetadata {
    return {
      client_name: "kavachOS interop test (MCP TypeScript SDK)",
      redirect_uris: [this.redirect],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }

  state(): string {
    this.lastState = randomBytes(16).toString("base64url");
    return this.lastState;
  }

  clientInformation(): OAuthClientInformationMixed | undefined {
    return this.client;
  }

  saveClientInformation(info: OAuthClientInformationMixed): void {
    if (!this.client || this.client.client_id !== info.client_id) this.registrations += 1;
    this.client = info;
  }

  get clientId(): string | undefined {
    return this.client?.client_id;
  }

  tokens(): OAuthTokens | undefined {
    if (this.saved && this.stepUpPending) {
      // Step-up needs a new authorization: a refresh grant cannot widen scope (RFC 6749 §6), yet
      // SDK 1.x always tries the refresh token first and then gives up on the identical 403
      // (modelcontextprotocol/typescript-sdk#2255). Withholding the refresh token while a scope
      // challenge is pending sends the SDK down its own authorization branch, as the spec intends.
      const { refresh_token: _withheld, ...rest } = this.saved;
      return rest;
    }
    return this.saved;
  }

  get currentTokens(): OAuthTokens | undefined {
    return this.saved;
  }

  saveTokens(tokens: OAuthTokens): void {
    this.tokenSaves += 1;
    this.saved = tokens;
    this.stepUpPending = false;
  }

  redirectToAuthorization(authorizationUrl: URL): void {
    this.authorizationUrls.push(authorizationUrl);
    this.onAuthorizationUrl(authorizationUrl);
  }

  saveCodeVerifier(codeVerifier: string): void {
    this.verifier = codeVerifier;
  }

  codeVerifier(): string {
    return this.verifier;
  }

  saveDiscoveryState(state: OAuthDiscoveryState): void {
    this.discovery = state;
  }

  discoveryState(): OAuthDiscoveryState | undefined {
    return this.discovery;
  }

  get issuer(): string | undefined {
    return this.discovery?.authorizationServerMetadata?.issuer;
  }
}

// -- an observing fetch: records what went over the wire, changes nothing -------------------

interface Exchange {
  method: string;
  url: string;
  status: number;
  grantType?: string;
  wwwAuthenticate?: string;
}

function observingFetch(provider: MemoryProvider, log: Exchange[]): FetchLike {
  return async (url, init) => {
    const response = await fetch(url, init);
    const entry: Exchange = { method: init?.method ?? "GET", url: String(url), status: response.status };
    if (init?.body instanceof URLSearchParams) {
      entry.grantType = init.body.get("grant_type") ?? undefined;
    } else if (typeof init?.body === "string" && init.body.includes("grant_type=")) {
      entry.grantType = new URLSearchParams(init.body).get("grant_type") ?? undefined;
    }
    const challenge = response.headers.get("www-authenticate");
    if (challenge) entry.wwwAuthenticate = challenge;
    if (response.status === 403 && challenge && /error="?insufficient_scope/.test(challenge)) {
      provider.stepUpPending = true;
    }
    log.push(entry);
    return response;
  };
}

// -- the run ----------------------------------------------------------------------------------

function claims(jwt: string | undefined): Json {
  if (!jwt) return {};
  const part = jwt.split(".")[1] ?? "";
  try {
    return JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as Json;
  } catch {
    return {};
  }
}

function textOf(result: unknown): string {
  const content = (result as { content?: Array<{ type: string; text?: string }> }).content ?? [];
  return content
    .filter((c) => c.type === "text")
    .map((c) => c.text ?? "")
    .join("");
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function main(): Promise<number> {
  const mcpUrl = process.argv[2];
  if (!mcpUrl) {
    process.stderr.write("usage: node mcp_oauth_client.ts <mcp-url>\n");
    return 2;
  }
  const allowedTool = process.env.MCP_ALLOWED_TOOL || "echo";
  const stepUpTool = process.env.MCP_STEP_UP_TOOL || "add";
  const timeoutMs = Number(process.env.MCP_CLIENT_TIMEOUT_MS || 60000);

  const listener = new CallbackListener();
  await listener.start();
  emit("listening", { redirect_uri: listener.redirectUri });

  const provider = new MemoryProvider(listener.redirectUri);
  provider.onAuthorizationUrl = (url) => emit("authorize", { url: url.toString() });
  const wire: Exchange[] = [];
  const mcpHref = new URL(mcpUrl).href;
  const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), {
    authProvider: provider,
    fetch: observingFetch(provider, wire),
  });
  const client = new Client({ name: "kavach-ts-interop", version: "0.0.0" });
  const result: Json = {};

  // The person approves in their browser; the code arrives on the listener.
  async function completeAuthorization(): Promise<void> {
    const response = await listener.next(timeoutMs);
    check(response.state === provider.lastState, `state mismatch: sent ${provider.lastState}, got ${response.state}`);
    check(response.iss !== null, "authorization response has no iss parameter (RFC 9207)");
    check(response.iss === provider.issuer, `iss ${response.iss} is not the issuer ${provider.issuer}`);
    await transport.finishAuth(response.code);
  }

  async function step<T>(name: string, body: () => Promise<T>): Promise<T> {
    try {
      const value = await body();
      emit("step", { name, ok: true });
      return value;
    } catch (err) {
      emit("step", { name, ok: false, error: String(err instanceof Error ? err.stack ?? err.message : err) });
      throw err;
    }
  }

  try {
    // 1-3: discovery, registration, authorization, code redemption.
    await step("connect", async () => {
      try {
        await client.connect(transport);
        throw new StepFailed("connected without being asked to authorize");
      } catch (err) {
        if (!(err instanceof UnauthorizedError)) throw err;
      }
      const first = wire.find((e) => e.url === mcpHref);
      check(first?.status === 401, `first MCP request answered ${first?.status}, not 401`);
      check(first?.wwwAuthenticate?.includes("resource_metadata="), "401 challenge names no resource_metadata");
      check(provider.clientId, "no client registered");
      await completeAuthorization();
      // The transport was started by the failed attempt; connect a fresh one that reuses the provider.
      await transport.close();
    });

    const transport2 = new StreamableHTTPClientTransport(new URL(mcpUrl), {
      authProvider: provider,
      fetch: observingFetch(provider, wire),
    });
    const session = new Client({ name: "kavach-ts-interop", version: "0.0.0" });
    await step("reconnect", () => session.connect(transport2));
    const firstToken = provider.currentTokens;
    result.first_token_scope = firstToken?.scope ?? null;
    result.first_token_claims = claims(firstToken?.access_token);

    // 4: tools/list and a tool the grant covers.
    const tools = await step("list_tools", () => session.listTools());
    result.tools = tools.tools.map((t) => t.name);
    const echoed = await step("call_allowed_tool", () =>
      session.callTool({ name: allowedTool, arguments: allowedTool === "echo" ? { text: "hello kavach" } : {} }),
    );
    result.allowed_tool_text = textOf(echoed);

    // 5: step-up.
    const addArgs = { a: 2, b: 3 };
    const stepped = await step("call_step_up_tool", async () => {
      const before = wire.length;
      try {
        await session.callTool({ name: stepUpTool, arguments: addArgs });
        throw new StepFailed(`${stepUpTool} succeeded without step-up: the first grant already covered it`);
      } catch (err) {
        if (!(err instanceof UnauthorizedError)) throw err;
      }
      const forbidden = wire.slice(before).find((e) => e.status === 403);
      check(forbidden, "no 403 from the resource before the step-up");
      result.insufficient_scope_challenge = forbidden.wwwAuthenticate ?? null;
      check(provider.authorizationUrls.length === 2, `expected a second authorization, saw ${provider.authorizationUrls.length}`);
      result.step_up_authorization_scope = provider.authorizationUrls[1]!.searchParams.get("scope");
      await completeAuthorization();
      return session.callTool({ name: stepUpTool, arguments: addArgs });
    });
    result.step_up_tool_text = textOf(stepped);
    result.step_up_token_scope = provider.currentTokens?.scope ?? null;

    // 6: expiry and refresh.
    const expiresIn = Number(provider.currentTokens?.expires_in ?? 0);
    check(expiresIn > 0 && expiresIn <= 30, `access token lifetime ${expiresIn}s: start the server with a short one`);
    const beforeRefresh = provider.currentTokens;
    await sleep(expiresIn * 1000 + 1500);
    const refreshed = await step("call_after_expiry", async () => {
      const before = wire.length;
      const value = await session.callTool({ name: stepUpTool, arguments: { a: 20, b: 22 } });
      const after = wire.slice(before);
      const rejected = after.find((e) => e.url === mcpHref && e.status === 401);
      check(rejected, "the expired access token was not rejected with 401");
      result.expired_token_challenge = rejected.wwwAuthenticate ?? null;
      const refresh = after.find((e) => e.grantType === "refresh_token");
      check(refresh?.status === 200, `refresh grant answered ${refresh?.status}`);
      check(provider.authorizationUrls.length === 2, "the refresh needed the person again");
      check(provider.currentTokens?.access_token !== beforeRefresh?.access_token, "no new access token");
      check(provider.currentTokens?.refresh_token !== beforeRefresh?.refresh_token, "refresh token not rotated");
      return value;
    });
    result.after_refresh_text = textOf(refreshed);

    await session.close();
    result.registrations = provider.registrations;
    result.authorizations = provider.authorizationUrls.length;
    result.token_grants = wire.filter((e) => e.grantType).map((e) => `${e.grantType}:${e.status}`);
    result.oauth_requests = wire.filter((e) => e.url !== mcpHref).map((e) => `${e.method} ${e.url} ${e.status}`);
    result.ok = true;
    emit("result", result);
    return 0;
  } catch (err) {
    result.ok = false;
    result.error = err instanceof Error ? err.message : String(err);
    result.wire = wire;
    emit("result", result);
    return 1;
  } finally {
    listener.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    emit("result", { ok: false, error: String(err instanceof Error ? err.stack : err) });
    process.exit(1);
  },
);
