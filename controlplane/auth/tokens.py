"""Bearer tokens and their scopes, from the environment, a file, or generated on first start.

Scopes: `admin` (policy writes, compile, keys, publish, audit), `evaluate` (evaluation endpoints),
`agent` (what OPA agents call: bundles, decision logs, status).

Sources, merged: `GROQPOLICY_TOKENS` (`[name=]token:scope+scope,...`) and `GROQPOLICY_TOKENS_FILE`
(the same entries, one per line, `#` comments). With neither set, the control plane uses
`<state_dir>/tokens`, generating it (mode 0600) on first start with three tokens: `admin`
(admin+evaluate+agent), `evaluate` and `agent`. Tokens are kept only as SHA-256 digests in memory
for lookup, so comparing a presented token never walks the secret byte by byte.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from bridge.kernel.errors import ConfigError

if TYPE_CHECKING:
    from bridge.kernel.config import Settings

log = logging.getLogger(__name__)

SCOPES: tuple[str, ...] = ("admin", "evaluate", "agent")
MIN_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/-]+$")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
GENERATED = (("admin", ("admin", "evaluate", "agent")), ("evaluate", ("evaluate",)), ("agent", ("agent",)))


class TokenConfigError(ConfigError):
    """A token entry that cannot be used as given."""


class Token(msgspec.Struct, frozen=True):
    name: str
    scopes: frozenset[str]
    secret: str  # kept so a generated agent configuration can carry it


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_entry(entry: str, where: str, index: int) -> Token:
    """`[name=]token:scope+scope` -> Token; errors name the source and position, never the token."""
    entry = entry.strip()
    name = f"token{index + 1}"
    head, sep, scopes_part = entry.rpartition(":")
    if not sep or not head:
        raise TokenConfigError(f"{where}: entry {index + 1}: expected [name=]token:scope+scope")
    if "=" in head:
        name, head = head.split("=", 1)
        if not _NAME.match(name):
            raise TokenConfigError(f"{where}: entry {index + 1}: name {name!r}: expected [A-Za-z0-9._-]+")
    if len(head) < MIN_TOKEN_LENGTH or not _TOKEN.match(head):
        raise TokenConfigError(f"{where}: entry {index + 1} ({name}): token must be at least {MIN_TOKEN_LENGTH} characters of [A-Za-z0-9._~+/-]")
    scopes = [s.strip() for s in scopes_part.split("+") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise TokenConfigError(f"{where}: entry {index + 1} ({name}): scopes {scopes_part!r}: expected one or more of {'+'.join(SCOPES)}")
    return Token(name=name, scopes=frozenset(scopes), secret=head)


def parse_tokens(text: str, where: str, separator: str = ",") -> list[Token]:
    entries = [e for e in (line.split("#", 1)[0].strip() for line in text.split(separator)) if e]
    return [parse_entry(e, where, i) for i, e in enumerate(entries)]


class TokenSet:
    def __init__(self, tokens: list[Token], source: str) -> None:
        self.source = source
        self._by_digest: dict[str, Token] = {}
        for t in tokens:
            self._by_digest[_digest(t.secret)] = t

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, presented: str) -> Token | None:
        return self._by_digest.get(_digest(presented))

    def agent_token(self) -> Token | None:
        """The least-privileged token that holds `agent`: what generated OPA configs carry."""
        candidates = [t for t in self._by_digest.values() if "agent" in t.scopes]
        return min(candidates, key=lambda t: (len(t.scopes), t.name), default=None)

    def with_scope(self, scope: str) -> Token | None:
        candidates = [t for t in self._by_digest.values() if scope in t.scopes]
        return min(candidates, key=lambda t: (len(t.scopes), t.name), default=None)

    def digests(self, scope: str) -> list[str]:
        """SHA-256 (hex) of every token holding `scope`: what an OPA agent's authz policy checks."""
        return sorted(d for d, t in self._by_digest.items() if scope in t.scopes)

    def by_name(self, name: str) -> Token | None:
        return next((t for t in self._by_digest.values() if t.name == name), None)


def default_tokens_file(state_dir: Path) -> Path:
    return state_dir / "tokens"


def _generate(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# groqpolicy bearer tokens: [name=]token:scope+scope (generated; edit or replace freely)"]
    lines += [f"{name}={secrets.token_urlsafe(32)}:{'+'.join(scopes)}" for name, scopes in GENERATED]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def ensure_secret(path: Path) -> str:
    """A random token kept in `path` (0600), generated on first use; another process generating it
    at the same moment is fine (O_EXCL: one wins, both read the same)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
    secret = path.read_text().strip()
    if len(secret) < MIN_TOKEN_LENGTH or not _TOKEN.match(secret):
        raise TokenConfigError(f"{path}: expected one token of at least {MIN_TOKEN_LENGTH} characters of [A-Za-z0-9._~+/-]")
    return secret


def ensure_tokens(settings: Settings) -> TokenSet:
    """The configured tokens; generates `<state_dir>/tokens` when nothing is configured."""
    tokens: list[Token] = []
    sources = []
    if settings.tokens:
        tokens += parse_tokens(settings.tokens, "GROQPOLICY_TOKENS")
        sources.append("GROQPOLICY_TOKENS")
    if settings.tokens_file is not None:
        try:
            text = settings.tokens_file.read_text()
        except OSError as exc:
            raise TokenConfigError(f"GROQPOLICY_TOKENS_FILE={settings.tokens_file}: {exc.strerror}") from exc
        tokens += parse_tokens(text, str(settings.tokens_file), separator="\n")
        sources.append(str(settings.tokens_file))
    if not sources:
        path = default_tokens_file(settings.state_dir)
        if not path.exists():
            try:
                _generate(path)
                log.warning("auth: no GROQPOLICY_TOKENS configured; generated admin, evaluate and agent tokens in %s", path)
            except FileExistsError:  # another process generated it a moment ago
                pass
        tokens = parse_tokens(path.read_text(), str(path), separator="\n")
        sources.append(str(path))
    if not tokens:
        raise TokenConfigError(f"{', '.join(sources)}: no tokens configured (every protected endpoint would refuse)")
    return TokenSet(tokens, ", ".join(sources))
