"""Connect a process to NATS as its role: its credential, its TLS, its private inbox, a bounded first try.

Every groqpolicy process (control plane, inference worker, gateway, CLI tools) is one *role* on
NATS. The server lets a role subscribe only to replies under `_INBOX.<role>.>`, so the client must
create its inboxes there (`inbox_prefix`); with the default `_INBOX.` a request could not even
receive its answer, and with a shared prefix any client could read everyone's replies.

The credential is one of (`NatsSettings`): a `.creds` file from a cluster's operator (user JWT +
seed), an nkey seed file (what `groqpolicy up` generates per role), an nkey seed held in memory, or
user + password; TLS with any of them. The file's kind is checked before connecting, so a seed
given where a `.creds` file belongs (or the other way round) is a one-line configuration error
instead of nats-py's `TypeError` deep in the handshake. No secret is ever put in a message.

Why the first connect is bounded: with `max_reconnect_attempts=-1` (what long-running processes
want, so that a NATS restart never kills them) nats-py treats `Authorization Violation` during the
*first* connect like an unreachable server and retries forever; a wrong key looks like a hang. Here
the first connect watches nats-py's error callback: a refused credential or a certificate that does
not verify fails at once, anything else (server still starting) is retried until
`connect_timeout_s`. Once connected, reconnects never give up, as before.

Why violations are logged here, rate-limited: a permission violation never closes the connection and
never raises where the call was made (a JetStream call just times out); the only trace is the error
callback, once per message. `ViolationLog` writes one line per subject and interval with a count,
so a misconfigured permission is visible without flooding the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import nats.errors
from nats.aio.client import Client as NatsClient

from bridge.kernel.config import NatsSettings
from bridge.kernel.errors import ConfigError, Unavailable

log = logging.getLogger("groqpolicy.nats")

ErrorCallback = Callable[[Exception], Awaitable[None]]
VIOLATION_LOG_INTERVAL_S = 60.0
_JWT_MARK = "BEGIN NATS USER JWT"
_SEED_MARK = "BEGIN USER NKEY SEED"
# nats-py lowercases the server's -ERR text, the subject included
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"(?: using queue "([^"]*)")?')
# -ERR texts that no retry can fix: the server does not know or no longer accepts the credential
_REFUSED = ("authorization violation", "authentication expired", "authentication revoked")
# TLS alerts by which a server refuses the client's certificate (or its absence): no retry fixes them
_CERT_REFUSED = frozenset({
    "TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA", "TLSV1_ALERT_ACCESS_DENIED",
})


class NatsCredentialRefused(ConfigError):
    """The server refused this process's NATS credential (unknown key, wrong password, expired JWT)."""

    code = "nats_credential_refused"


class NatsTlsError(ConfigError):
    """TLS to NATS cannot be established as configured (certificate does not verify, server without TLS)."""

    code = "nats_tls"


class _ClearText(nats.errors.Error):
    """Raised inside nats-py's handshake: a nats.errors.Error, so a reconnect counts it as a failed
    attempt (and tries again) instead of dying on an exception type it does not expect."""


class NatsUnreachable(Unavailable):
    """No NATS server answered within the first connect's bound."""

    code = "nats_unreachable"


def inbox_prefix(role: str) -> str:
    """Where a role's replies arrive; the server lets the role subscribe to `<prefix>.>` only."""
    if not role or not role.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"role {role!r}: want letters, digits, '-' or '_'")
    return f"_INBOX.{role}"


# -- credential files ---------------------------------------------------------------------------

def _read_secret_file(path: Path, variable: str) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{variable}={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{variable}={path}: cannot be read ({type(exc).__name__})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s=%s: readable by other users (mode %o); a NATS credential should be 0600",
                    variable, path, stat.S_IMODE(mode))
    return text


def check_user_seed(seed: str, what: str) -> None:
    """Raise ConfigError unless `seed` is an nkey *user* seed (never echoing it)."""
    import nkeys  # type: ignore[import-untyped]  # no type information; the nats-py[nkeys] extra

    if _JWT_MARK in seed:
        raise ConfigError(f"{what}: holds a .creds file (JWT + seed), not a bare seed; set GROQPOLICY_NATS_CREDS instead")
    text = seed.strip()
    if text[:2] in ("SA", "SO"):
        kind = "an account" if text[:2] == "SA" else "an operator"
        raise ConfigError(f"{what}: holds {kind} seed; a process connects with a user seed (SU...)")
    try:
        key = nkeys.from_seed(bytearray(text.encode()))
    except Exception:  # noqa: BLE001 - nkeys raises several unrelated types for a malformed seed
        raise ConfigError(f"{what}: not a valid nkey seed") from None
    public = key.public_key
    key.wipe()
    if not public.startswith(b"U"):
        raise ConfigError(f"{what}: not an nkey user seed (SU...)")


def check_creds(text: str, what: str) -> None:
    """Raise ConfigError unless `text` has the shape of a `.creds` file."""
    if _JWT_MARK not in text:
        if text.strip().startswith("S") and "\n" not in text.strip():
            raise ConfigError(f"{what}: holds a bare nkey seed, not a .creds file; set GROQPOLICY_NATS_NKEY instead")
        raise ConfigError(f"{what}: not a .creds file (no '{_JWT_MARK}' block)")
    if _SEED_MARK not in text:
        raise ConfigError(f"{what}: a .creds file without its '{_SEED_MARK}' block")


def describe(settings: NatsSettings) -> str:
    """Which credential a process presents, for messages (never the secret)."""
    if settings.creds_file:
        return f"the creds file {settings.creds_file}"
    if settings.nkey_file:
        return f"the nkey in {settings.nkey_file}"
    if settings.nkey_seed:
        return "the nkey seed given in memory"
    if settings.user:
        return f"user {settings.user!r}"
    return "an anonymous connection (no credential configured)"


def _tls_context(settings: NatsSettings) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)
        if settings.tls_cert and settings.tls_key:
            ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"GROQPOLICY_NATS_TLS_*: cannot load the CA or client certificate: {exc}") from None
    return ctx


def servers(url: str) -> list[str]:
    """The server URLs of `url`: one, or a cluster's several separated by commas (nats-server's own
    spelling, e.g. `nats://n1:4222,nats://n2:4222`), so a process can start while one node is down."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise ConfigError("NATS URL: empty")
    return found


def _loopback(url: str) -> bool:
    for server in servers(url):
        host = urlparse(server).hostname or ""
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    return True


def wants_tls(url: str, settings: NatsSettings) -> bool:
    return settings.tls or any(urlparse(server).scheme == "tls" for server in servers(url))


def connect_options(url: str, settings: NatsSettings, role: str) -> dict[str, Any]:
    """nats-py `connect()` keyword arguments for this credential, TLS and role (files checked)."""
    if any(urlparse(server).username or urlparse(server).password for server in servers(url)):
        raise ConfigError("NATS URL: carries user info; set GROQPOLICY_NATS_USER and GROQPOLICY_NATS_PASSWORD instead "
                          "(nats-py does not percent-decode the URL's password)")
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(role)}
    if settings.creds_file:
        check_creds(_read_secret_file(settings.creds_file, "GROQPOLICY_NATS_CREDS"),
                    f"GROQPOLICY_NATS_CREDS={settings.creds_file}")
        options["user_credentials"] = str(settings.creds_file)
    elif settings.nkey_file:
        check_user_seed(_read_secret_file(settings.nkey_file, "GROQPOLICY_NATS_NKEY"),
                        f"GROQPOLICY_NATS_NKEY={settings.nkey_file}")
        options["nkeys_seed"] = str(settings.nkey_file)
    elif settings.nkey_seed:
        check_user_seed(settings.nkey_seed, "the nkey seed")
        options["nkeys_seed_str"] = settings.nkey_seed
    elif settings.user:
        if not wants_tls(url, settings) and not _loopback(url):
            raise ConfigError(f"GROQPOLICY_NATS_PASSWORD: would cross the network in clear text to "
                              f"{', '.join(str(urlparse(server).hostname) for server in servers(url))}; "
                              "configure TLS (GROQPOLICY_NATS_TLS_CA or a tls:// URL)")
        options["user"] = settings.user
        options["password"] = settings.password
    if wants_tls(url, settings):
        options["tls"] = _tls_context(settings)
        if settings.tls_hostname:
            options["tls_hostname"] = settings.tls_hostname
    return options


# -- error callback -----------------------------------------------------------------------------

@dataclass
class ViolationLog:
    """nats-py error callback: one log line per (kind, subject, queue) and interval, with a count.

    Other asynchronous errors (a lost connection, a reconnect refused) are logged the same way,
    keyed by their text, so a reconnect loop writes one line per interval too."""

    interval_s: float = VIOLATION_LOG_INTERVAL_S
    logger: logging.Logger = log
    clock: Callable[[], float] = time.monotonic
    _last: dict[tuple[str, ...], float] = field(default_factory=dict)
    _suppressed: dict[tuple[str, ...], int] = field(default_factory=dict)

    async def __call__(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        match = _VIOLATION.search(text)
        key = ("violation", *match.groups(default="")) if match else ("error", type(exc).__name__, text)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        since = f" ({more} more in the last {self.interval_s:.0f}s)" if more else ""
        if match:
            kind, subject, queue = match.groups(default="")
            in_queue = f" in queue {queue!r}" if queue else ""
            self.logger.error("NATS: permission denied: %s to %r%s%s (this identity is not allowed to; the server "
                              "dropped it)", kind, subject, in_queue, since)
        else:
            self.logger.warning("NATS: %s%s", text, since)


# -- connect ------------------------------------------------------------------------------------

def _client_cert_refused(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None) in _CERT_REFUSED


def _fatal(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError | _ClearText) or _client_cert_refused(exc) or (
        isinstance(exc, nats.errors.Error) and any(mark in str(exc).lower() for mark in _REFUSED))


def _uses_tls(nc: NatsClient) -> bool:
    # nats-py upgrades to TLS exactly when the server's INFO says `tls_required`; without that
    # flag it stays in clear text even for a tls:// URL, so the flag is what tells
    info = getattr(nc, "_server_info", None)
    return isinstance(info, dict) and bool(info.get("tls_required"))


class _FirstTry:
    """The error callback of one client: until the first connect succeeds it remembers what nats-py
    reported and flags a failure no retry can fix; afterwards it logs (rate-limited)."""

    def __init__(self, error_cb: ErrorCallback | None) -> None:
        self.connected = False
        self.last: BaseException | None = None
        self.fatal: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self.error_cb = error_cb
        self.violations = ViolationLog()

    async def on_error(self, exc: Exception) -> None:
        if not self.connected:
            self.last = exc
            if _fatal(exc) and not self.fatal.done():
                self.fatal.set_result(exc)
        else:
            await self.violations(exc)
        if self.error_cb is not None:
            await self.error_cb(exc)

    def cause(self, attempt: asyncio.Future) -> BaseException | None:
        """Why the first connect did not succeed."""
        if self.fatal.done():
            return self.fatal.result()
        if attempt.done() and not attempt.cancelled():
            return attempt.exception()
        return self.last


def _password_over_tls(nc: NatsClient, password: str) -> Callable[[], str]:
    def send() -> str:
        # called by nats-py while it builds CONNECT, after any TLS upgrade: a server (or a man in
        # the middle) that did not ask for TLS never gets the password in clear text
        if not _uses_tls(nc):
            raise _ClearText("nats: the server did not start TLS; the password was not sent")
        return password

    return send


async def connect(url: str, *, role: str, settings: NatsSettings | None = None, name: str | None = None,
                  error_cb: ErrorCallback | None = None, **options: Any) -> NatsClient:
    """A connected client for `role`, presenting `settings`' credential (default: the environment's).

    Raises NatsCredentialRefused or NatsTlsError at once, NatsUnreachable after
    `settings.connect_timeout_s`, ConfigError for a credential file that cannot be used. Further
    `options` go to nats-py (`reconnected_cb`, `reconnect_time_wait`, ...); `error_cb` sees every
    asynchronous error in addition to the rate-limited log."""
    settings = settings or NatsSettings.from_env()
    opts = connect_options(url, settings, role)
    first = _FirstTry(error_cb)
    nc = NatsClient()
    tls = wants_tls(url, settings)
    if tls and "password" in opts:
        opts["password"] = _password_over_tls(nc, opts["password"])
    options.setdefault("max_reconnect_attempts", -1)
    options.setdefault("allow_reconnect", True)
    options.setdefault("connect_timeout", min(5.0, settings.connect_timeout_s))
    attempt = asyncio.ensure_future(nc.connect(servers(url), name=name or f"groqpolicy-{role}", error_cb=first.on_error,
                                               **opts, **options))
    try:
        racers: list[asyncio.Future[Any]] = [attempt, first.fatal]
        done, _ = await asyncio.wait(racers, timeout=settings.connect_timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        await _abandon(nc, attempt)
        raise
    if attempt in done and attempt.exception() is None:
        first.connected = True
        if tls and not _uses_tls(nc):
            await _abandon(nc, attempt)
            raise NatsTlsError(f"NATS at {url}: TLS is configured but the server did not start TLS; disconnected")
        return nc
    cause = first.cause(attempt)
    await _abandon(nc, attempt)
    raise _first_connect_error(url, settings, cause) from None


def _first_connect_error(url: str, settings: NatsSettings, cause: BaseException | None) -> Exception:
    who = describe(settings)
    if isinstance(cause, ConfigError):
        return cause
    if isinstance(cause, _ClearText):
        return NatsTlsError(f"NATS at {url}: TLS is configured but the server did not start TLS; the password was not sent")
    if isinstance(cause, ssl.SSLCertVerificationError):
        return NatsTlsError(f"NATS at {url}: the server's certificate does not verify ({cause.verify_message}); "
                            "check GROQPOLICY_NATS_TLS_CA and GROQPOLICY_NATS_TLS_HOSTNAME")
    if cause is not None and _client_cert_refused(cause):
        return NatsTlsError(f"NATS at {url}: the server refused this client's certificate ({getattr(cause, 'reason', '')}); "
                            "check GROQPOLICY_NATS_TLS_CERT and GROQPOLICY_NATS_TLS_KEY")
    if cause is not None and _fatal(cause):
        server_said = str(cause).removeprefix("nats: ").strip("'")
        return NatsCredentialRefused(f"NATS at {url}: the server refused {who}: {server_said}")
    why = f"{type(cause).__name__}: {cause}" if cause is not None and str(cause) else \
        (type(cause).__name__ if cause is not None else "no answer")
    return NatsUnreachable(f"NATS at {url}: not connected within {settings.connect_timeout_s:g}s ({why})")


async def _abandon(nc: NatsClient, attempt: asyncio.Future) -> None:
    """Stop a first connect that will not be used, and whatever it opened."""
    attempt.cancel()
    await asyncio.gather(attempt, return_exceptions=True)
    try:
        await nc.close()
    except Exception:  # noqa: BLE001 - nothing to keep from a connection that never served
        pass


__all__ = [
    "NatsCredentialRefused", "NatsTlsError", "NatsUnreachable", "ViolationLog", "check_creds", "check_user_seed",
    "connect", "connect_options", "describe", "inbox_prefix", "servers",
]
