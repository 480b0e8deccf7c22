"""NATS identities for the embedded server: one nkey user per role, and the server config that
admits only them, each with only the subjects it uses.

Files (`NatsAuth(<state>/nats/auth)`): `<role>.nk` holds the role's nkey user seed (mode 0600, the
directory 0700), made once and reused at every later start (a running client keeps working across
restarts); `nats-auth.conf` is rendered from the seeds' public keys at every start, so an upgrade
that changes a permission takes effect with it. `nats-server -c nats-auth.conf` (beside the usual
`-a -p -js -sd` flags) then refuses a client without a known key: there is one explicit account with
JetStream, no `no_auth_user`, and no user outside the account.

Why nkeys in static config (not decentralized JWT, not passwords): the server stores only public
keys and a client proves its seed by signing a nonce, so no secret crosses the wire or sits in the
server config; generating six users takes milliseconds with the `nkeys` package alone; rotation is
a config edit plus SIGHUP. JWT accounts fit a cluster someone else runs (the product connects with
their `.creds` file, `bridge.inference.connect`), and need tooling Python does not have.

The roles (`permissions()`; each list is allow-only, and never empty: an empty allow list means "no
restriction" to nats-server):

    controlplane  policy KV + artifact object store (read/write, no create), audit stream (append and read; no create,
                  update, delete or purge), the audit checkpoints' bucket (get and put under its keys; no create), the
                  replay store (append and read; no create, update, delete or purge), the shadows' bucket (read, write
                  and watch keys; no create), the evaluation jobs' bucket and results (read/write/delete; no create),
                  policy.escalations, groq.infer.*, workers' $SRV.STATS; serves policy.evaluate (queue group)
    worker        serves groq.infer.* in its queue group only; reads and writes the judgments bucket
    gateway       requests groq.infer.*; nothing else
    tool          requests policy.evaluate; nothing else (`groqpolicy evaluate --via nats`)
    ops           discovery only ($SRV.PING/INFO/STATS): which workers and control planes are up, and
                  their counters. Needed: tests and operators (`nats micro ls`) otherwise reach for the
                  control plane's key, which can rewrite policies; discovery replies carry no secret.
    bootstrap     creates the streams and buckets (and migrates the audit stream's replicas). Used for
                  a moment by whoever starts nats-server, before any other role connects.

Who creates the streams, and why a separate `bootstrap` identity: a subject permission cannot limit
what a stream *contains*. A worker allowed `$JS.API.STREAM.CREATE.KV_groq_judgments` can create that
stream over `audit.>`, squatting the audit subjects before the control plane's stream exists; a
control plane allowed `STREAM.UPDATE.GROQPOLICY_AUDIT` can set `max_msgs: 2` and cut the trail, which
`deny_delete`/`deny_purge` do not prevent. So no long-running process holds CREATE or UPDATE: the
process that starts nats-server runs `bootstrap()` with the product's own `ensure` code first, and
the runtime roles find everything in place (their "get or create" calls only read stream info). On a
cluster someone else runs, their administrator creates the streams (or grants the runtime roles the
bootstrap subjects too, as before this change).

Each role has its own inbox prefix (`_INBOX.<role>`, `bridge.inference.connect.inbox_prefix`) and may
subscribe only below it, so no role reads another's replies (two clients of one role still share
one). The responders (controlplane, worker) answer through `allow_responses` (one reply per request,
for as long as the longest deadline), not through a publish right on `_INBOX.>` that would let them
inject replies into anyone's inbox.

Rotation (`rotate`, `retire`): the new seed becomes `<role>.nk` and the old one `<role>.previous.nk`;
both public keys are in the config until `retire`. SIGHUP the server after each step: clients
restarted with the new seed connect during the overlap, and a client still on the retired key is
disconnected at the second reload.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import msgspec
import nkeys  # type: ignore[import-untyped]  # no type information; the nats-py[nkeys] extra
from nats.aio.client import Client as NatsClient

from bridge.inference.cache import KVCache
from bridge.inference.connect import check_user_seed, connect
from bridge.inference.wire import MAX_DEADLINE_MS, SUBJECT_PREFIX
from bridge.kernel.config import NatsSettings
from bridge.kernel.errors import ConfigError

log = logging.getLogger(__name__)

ACCOUNT = "GROQPOLICY"
ROLES = ("controlplane", "worker", "gateway", "tool", "ops", "bootstrap")
CONFIG_NAME = "nats-auth.conf"
# a responder may answer for as long as the longest deadline a caller can give, plus the time its
# answer needs to travel; nats-server's default (2 min) is exactly the deadline and no more
RESPONSE_WINDOW_S = MAX_DEADLINE_MS // 1000 + 30


class Names(msgspec.Struct, frozen=True, kw_only=True):
    """The NATS names the product uses. The control plane's own names are spelled here because
    their modules sit above this one; tests/test_nats_auth.py holds each to its owner's constant."""

    policy_bucket: str = "groqpolicy_policies"  # controlplane.policies.store.BUCKET
    artifacts: str = "groqpolicy_artifacts"  # controlplane.policies.store.OBJECTS
    audit_stream: str = "GROQPOLICY_AUDIT"  # controlplane.audit.trail.STREAM
    audit_prefix: str = "audit"  # controlplane.audit.trail.PREFIX
    audit_checkpoints: str = "groqpolicy_audit_checkpoints"  # controlplane.audit.checkpoints.BUCKET
    signin_codes: str = "groqpolicy_signin"  # controlplane.dashboard.auth.SHARED_BUCKET
    evaljobs: str = "groqpolicy_evaljobs"  # controlplane.evaljobs.shared.BUCKET
    evaljob_results: str = "groqpolicy_evaljob_results"  # controlplane.evaljobs.shared.RESULTS
    escalations: str = "policy.escalations"  # controlplane.audit.escalation.SUBJECT
    replay_stream: str = "GROQPOLICY_REPLAY"  # controlplane.impact.store.STREAM
    replay_subjects: str = "replay.>"  # controlplane.impact.store.SUBJECTS
    evaluate: str = "policy.evaluate"  # controlplane.evaluation.schemas.EVALUATE_SUBJECT
    evaluate_chunk: str = "policy.evaluate.chunk"  # controlplane.evaluation.spread.CHUNK_SUBJECT
    agent_status: str = "agents.status"  # controlplane.agents.sharing.SUBJECT
    evaluate_service: str = "groqpolicy-policy"  # controlplane.evaluation.nats_service.SERVICE_NAME
    evaluate_queue: str = "policy-evaluate"  # controlplane.evaluation.nats_service.QUEUE_GROUP
    infer_prefix: str = SUBJECT_PREFIX
    worker_service: str = "groqpolicy-inference"  # bridge.inference.worker.service.SERVICE_NAME
    worker_queue: str = "groq-infer"  # bridge.inference.worker.service.QUEUE_GROUP
    judgments: str = KVCache.BUCKET
    shadows: str = "groqpolicy_shadows"  # controlplane.impact.shadow_state.BUCKET


class Grant(msgspec.Struct, frozen=True):
    subject: str  # a subject, or "<subject> <queue>" for a subscription only in that queue group
    why: str


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    publish: tuple[Grant, ...]
    subscribe: tuple[Grant, ...]
    responder: bool = False  # may answer the requests it receives (allow_responses)


def _js(verb: str, stream: str, why: str, suffix: str = "") -> Grant:
    return Grant(f"$JS.API.{verb}.{stream}{suffix}", why)


def _micro(service: str) -> tuple[Grant, ...]:
    """What a nats.micro service subscribes to so that $SRV discovery finds it."""
    return (Grant("$SRV.PING", "discovery: ping every service"), Grant("$SRV.INFO", "discovery"),
            Grant("$SRV.STATS", "discovery"), Grant(f"$SRV.*.{service}", "discovery by service name"),
            Grant(f"$SRV.*.{service}.*", "discovery by service instance"))


def _inbox(role: str) -> Grant:
    return Grant(f"_INBOX.{role}.>", "its own replies (clients connect with inbox_prefix _INBOX.<role>)")


def _controlplane(n: Names) -> Permissions:
    kv, obs, audit = f"KV_{n.policy_bucket}", f"OBJ_{n.artifacts}", n.audit_stream
    return Permissions(publish=(
        _js("STREAM.INFO", kv, "open the policy bucket"),
        _js("STREAM.MSG.GET", kv, "kv.get / get(revision) (nats-py makes buckets without direct get)"),
        Grant(f"$KV.{n.policy_bucket}.>", "put / create / update(last) / delete a policy"),
        _js("CONSUMER.CREATE", kv, "watch / history: an ephemeral ordered consumer"),
        _js("CONSUMER.INFO", kv, "watch: where the initial values end", ".>"),
        Grant(f"$JS.FC.{kv}.>", "flow-control replies of the watch"),
        _js("STREAM.INFO", obs, "open the artifact store"),
        _js("STREAM.MSG.GET", obs, "get / get_info: an artifact's meta message"),
        _js("STREAM.PURGE", obs, "put over an existing name purges its old chunks"),
        _js("CONSUMER.CREATE", obs, "get: the chunks through an ordered consumer"),
        Grant(f"$JS.FC.{obs}.>", "flow-control replies (large artifacts)"),
        Grant("$JS.API.STREAM.NAMES", "get: nats-py finds the artifact stream by subject"),
        Grant(f"$O.{n.artifacts}.>", "artifact chunks and meta"),
        _js("STREAM.INFO", audit, "audit: the tail and the stream's state"),
        _js("STREAM.MSG.GET", audit, "audit: the tail record, a record by sequence"),
        _js("DIRECT.GET", audit, "audit: batched reads"),
        Grant(f"{n.audit_prefix}.>", "audit appends (expected last sequence, atomic batches)"),
        _js("STREAM.INFO", f"KV_{n.audit_checkpoints}", "open the audit checkpoints' bucket"),
        _js("STREAM.MSG.GET", f"KV_{n.audit_checkpoints}", "audit verify: the checkpoint under each trusted key"),
        Grant(f"$KV.{n.audit_checkpoints}.>", "export a signed checkpoint of the audit stream's head"),
        _js("STREAM.INFO", f"KV_{n.signin_codes}", "open the dashboard's shared sign-in codes"),
        _js("STREAM.MSG.GET", f"KV_{n.signin_codes}", "redeem a sign-in code issued by any process"),
        Grant(f"$KV.{n.signin_codes}.>", "issue (create) and redeem (delete on its revision) a sign-in code"),
        *(_js(verb, s, f"evaluation jobs: {why}") for s in (f"KV_{n.evaljobs}", f"OBJ_{n.evaljob_results}")
          for verb, why in (("STREAM.INFO", "open the store"), ("STREAM.MSG.GET", "a job, a cancel flag, a result's meta"),
                            ("CONSUMER.CREATE", "key listing, a result's chunks (ordered consumers)"))),
        _js("CONSUMER.INFO", f"KV_{n.evaljobs}", "evaluation jobs: where the key listing ends", ".>"),
        *(Grant(f"$JS.FC.{s}.>", "flow control of those consumers") for s in (f"KV_{n.evaljobs}", f"OBJ_{n.evaljob_results}")),
        Grant(f"$KV.{n.evaljobs}.>", "evaluation jobs: create / update(last) / delete a job, its cancel flag, quarantine"),
        Grant(f"$O.{n.evaljob_results}.>", "evaluation jobs: result chunks and meta (any process reads any job's)"),
        _js("STREAM.PURGE", f"OBJ_{n.evaljob_results}", "evaluation jobs: delete (prune) a result's chunks"),
        Grant(n.escalations, "constitutional escalation events"),
        _js("STREAM.INFO", n.replay_stream, "replay store: the stream's state"),
        _js("DIRECT.GET", n.replay_stream, "replay store: batched reads for impact analysis"),
        Grant(n.replay_subjects, "replay store: recorded decisions and judgments (append only: no delete, no purge)"),
        Grant(f"{n.infer_prefix}.*", "model judgments from the workers"),
        Grant(f"$SRV.STATS.{n.worker_service}", "dashboard: the workers' counters"),
        _js("STREAM.INFO", f"KV_{n.shadows}", "open the shadows' bucket"),
        _js("STREAM.MSG.GET", f"KV_{n.shadows}", "kv.get: a saved shadow"),
        _js("CONSUMER.CREATE", f"KV_{n.shadows}", "watch: shadows begun / ended and counters moved on any process"),
        _js("CONSUMER.INFO", f"KV_{n.shadows}", "watch: where the initial values end", ".>"),
        Grant(f"$JS.FC.KV_{n.shadows}.>", "flow-control replies of the shadows' watch"),
        Grant(f"$KV.{n.shadows}.>", "define a shadow, its counters per process; remove them on promote / discard"),
        Grant(n.evaluate_chunk, "a batch's share for another control-plane process"),
        Grant(n.agent_status, "an agent's status report, for the other control-plane processes"),
    ), subscribe=(
        _inbox("controlplane"),
        Grant(f"{n.evaluate} {n.evaluate_queue}", "serve policy.evaluate, only in its queue group"),
        Grant(f"{n.evaluate_chunk} {n.evaluate_queue}", "decide another process's share of a batch, in the same group"),
        Grant(n.agent_status, "agents' status reports another control-plane process took"),
        *_micro(n.evaluate_service),
    ), responder=True)


def _worker(n: Names) -> Permissions:
    kv = f"KV_{n.judgments}"
    return Permissions(publish=(
        _js("STREAM.INFO", kv, "open the judgments bucket (L2 cache)"),
        _js("STREAM.MSG.GET", kv, "kv.get"),
        Grant(f"$KV.{n.judgments}.>", "kv.put"),
    ), subscribe=(
        _inbox("worker"),
        Grant(f"{n.infer_prefix}.* {n.worker_queue}", "serve groq.infer.<tier>, only in its queue group"),
        *_micro(n.worker_service),
    ), responder=True)


def _bootstrap(n: Names) -> Permissions:
    kv, obs, audit, judgments = f"KV_{n.policy_bucket}", f"OBJ_{n.artifacts}", n.audit_stream, f"KV_{n.judgments}"
    checkpoints, shadows = f"KV_{n.audit_checkpoints}", f"KV_{n.shadows}"
    return Permissions(publish=(
        *(_js(verb, stream, f"create {stream} where it is missing")
          for stream in (kv, obs, audit, checkpoints, judgments, n.replay_stream, shadows, f"KV_{n.signin_codes}",
                         f"KV_{n.evaljobs}", f"OBJ_{n.evaljob_results}")
          for verb in ("STREAM.INFO", "STREAM.CREATE")),
        _js("STREAM.UPDATE", audit, "bring the audit stream's replicas / atomic batches in line"),
        _js("STREAM.UPDATE", n.replay_stream, "bring the replay store's retention in line with the configuration"),
    ), subscribe=(_inbox("bootstrap"),))


def permissions(names: Names | None = None) -> dict[str, Permissions]:
    """Every role's permissions, in `ROLES` order."""
    n = names or Names()
    roles = {
        "controlplane": _controlplane(n),
        "worker": _worker(n),
        "gateway": Permissions(publish=(Grant(f"{n.infer_prefix}.*", "ask the workers for a judgment"),),
                               subscribe=(_inbox("gateway"),)),
        "tool": Permissions(publish=(Grant(n.evaluate, "ask the control plane for a decision"),),
                            subscribe=(_inbox("tool"),)),
        "ops": Permissions(publish=tuple(Grant(f"$SRV.{verb}{tail}", "service discovery")
                                         for verb in ("PING", "INFO", "STATS") for tail in ("", ".>")),
                           subscribe=(_inbox("ops"),)),
        "bootstrap": _bootstrap(n),
    }
    for role, perms in roles.items():
        if not perms.publish or not perms.subscribe:  # nats-server reads an empty allow list as "anything"
            raise AssertionError(f"role {role}: an empty allow list would lift every restriction")
    return roles


# -- the server config ----------------------------------------------------------------------------

def _q(text: str) -> str:
    """A quoted config string: unquoted, `$JS...` would be read as a variable reference."""
    if any(c in text for c in '"\\\n'):
        raise ValueError(f"{text!r}: not a NATS name")
    return f'"{text}"'


def _allow(kind: str, grants: Sequence[Grant]) -> list[str]:
    return [f"          {kind}: {{ allow: [",
            *(f"            {_q(g.subject)}  # {g.why}" for g in grants),
            "          ] }"]


def render(users: Mapping[str, Sequence[str]], names: Names | None = None) -> str:
    """The `accounts {}` block admitting `users` (role -> public keys; several during a rotation)."""
    table = permissions(names)
    lines = ["# groqpolicy's NATS identities (controlplane.infra.natsauth): rendered at every start from the",
             "# seeds beside this file. No no_auth_user and no user outside the account: anonymous clients and",
             "# unknown keys are refused.",
             "accounts {", f"  {ACCOUNT} {{", "    jetstream: enabled", "    users: ["]
    for role in ROLES:
        perms = table[role]
        for key in users.get(role, ()):
            lines += [f"      # {role}", "      {", f"        nkey: {_q(key)}", "        permissions: {",
                      *_allow("publish", perms.publish), *_allow("subscribe", perms.subscribe)]
            if perms.responder:
                lines.append(f'          allow_responses: {{ max: 1, expires: "{RESPONSE_WINDOW_S}s" }}')
            lines += ["        }", "      }"]
    lines += ["    ]", "  }", "}", ""]
    return "\n".join(lines)


# -- seeds on disk --------------------------------------------------------------------------------

def _public_key(seed: str) -> str:
    key = nkeys.from_seed(bytearray(seed.strip().encode()))
    try:
        return str(key.public_key.decode())
    finally:
        key.wipe()


def _write_private(path: Path, text: str, *, exclusive: bool) -> bool:
    """Write a 0600 file; False when `exclusive` and it exists (another process made it first)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


class NatsAuth:
    """The identities under one directory (`<state>/nats/auth`)."""

    def __init__(self, directory: Path, names: Names | None = None) -> None:
        self.dir = directory
        self.names = names or Names()

    @property
    def config_file(self) -> Path:
        return self.dir / CONFIG_NAME

    def seed_file(self, role: str, *, previous: bool = False) -> Path:
        if role not in ROLES:
            raise ConfigError(f"NATS role {role!r}: unknown (one of {', '.join(ROLES)})")
        return self.dir / f"{role}{'.previous' if previous else ''}.nk"

    def ensure(self) -> NatsAuth:
        """Make the seeds that are missing (never replacing one) and render the config."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        for role in ROLES:
            path = self.seed_file(role)
            if _write_private(path, _new_seed(), exclusive=True):
                log.info("NATS: generated the %s identity in %s", role, path)
        self.write_config()
        return self

    def public_keys(self) -> dict[str, list[str]]:
        keys: dict[str, list[str]] = {}
        for role in ROLES:
            for previous in (False, True):
                path = self.seed_file(role, previous=previous)
                if path.exists():
                    keys.setdefault(role, []).append(_public_key(self._read_seed(path)))
        return keys

    def write_config(self) -> Path:
        """Render the config from the seeds on disk; replaced atomically (a reload never reads half)."""
        text = render(self.public_keys(), self.names)
        tmp = self.config_file.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        _write_private(tmp, text, exclusive=True)
        os.replace(tmp, self.config_file)
        return self.config_file

    def server_args(self) -> list[str]:
        """What nats-server needs besides its usual flags."""
        return ["-c", str(self.config_file)]

    def credential(self, role: str) -> NatsSettings:
        """The settings a process of `role` connects with."""
        return NatsSettings(nkey_file=self.seed_file(role))

    def child_env(self, role: str) -> dict[str, str]:
        """The variables a child process of `role` needs (its seed file; never the seed itself)."""
        return {"GROQPOLICY_NATS_NKEY": str(self.seed_file(role))}

    def rotate(self, role: str) -> Path:
        """A new seed for `role`; the old one stays admitted (as `.previous`) until `retire`."""
        current, previous = self.seed_file(role), self.seed_file(role, previous=True)
        if previous.exists():
            raise ConfigError(f"NATS role {role}: a rotation is still open ({previous}); retire it first")
        os.replace(current, previous)
        _write_private(current, _new_seed(), exclusive=True)
        self.write_config()
        return current

    def retire(self, role: str) -> None:
        """Stop admitting `role`'s previous key (reload the server afterwards)."""
        self.seed_file(role, previous=True).unlink(missing_ok=True)
        self.write_config()

    def _read_seed(self, path: Path) -> str:
        mode = path.lstat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path}: not a regular file")
        if stat.S_IMODE(mode) != 0o600:
            os.chmod(path, 0o600)  # a seed readable by others is a leaked identity; close it before use
            log.warning("NATS: %s had mode %o; set to 0600", path, stat.S_IMODE(mode))
        seed = path.read_text()
        check_user_seed(seed, str(path))  # a damaged seed is never replaced: its clients would lose access
        return seed


def _new_seed() -> str:
    return str(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode())


Step = Callable[[NatsClient], Awaitable[object]]


async def bootstrap(url: str, auth: NatsAuth | NatsSettings, steps: Sequence[Step]) -> None:
    """Run `steps` (the product's stream and bucket `ensure` calls) as the bootstrap identity: the
    one under `auth`, or the credential given (a cluster someone else runs)."""
    credential = auth.credential("bootstrap") if isinstance(auth, NatsAuth) else auth
    nc = await connect(url, role="bootstrap", settings=credential)
    try:
        for step in steps:
            await step(nc)
    finally:
        await nc.drain()


__all__ = ["ACCOUNT", "ROLES", "Grant", "Names", "NatsAuth", "Permissions", "bootstrap", "permissions", "render"]
