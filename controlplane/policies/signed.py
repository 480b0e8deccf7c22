"""Signed policy records: what the control plane writes into the policy bucket, and what a replica
accepts from it.

A policy in the bucket is the record's JSON with one more member, `signature` = {kid, sig}: Ed25519
with the control plane's record key (controlplane.infra.recordkeys) over `groqpolicy-policy-record-v1`
+ the canonical JSON of {"key": <KV key>, "record": <every other member>}. The key is signed with
the record, so a signed record copied under another policy's key does not verify. A deletion is a
KV delete marker whose body is signed the same way over {"key"} (domain
`groqpolicy-policy-delete-v1`): without that, whoever can write the bucket could not add a policy
but could still remove one, which changes decisions just as well.

Whatever does not verify is refused by the store (controlplane.policies.store): never compiled,
never served, reported. The canonical JSON is re-encoded from the stored value decoded as plain
objects (sorted keys, msgspec's shortest float repr), which gives back exactly the bytes the writer
signed.
"""

from __future__ import annotations

from typing import Any

import msgspec

from controlplane.infra.recordkeys import UNKNOWN_KEY, UNSIGNED, RecordKeys
from controlplane.policies.schemas import PolicyRecord

DOMAIN = "groqpolicy-policy-record-v1"
DELETE_DOMAIN = "groqpolicy-policy-delete-v1"
# problems besides the signature's own (forged, unknown key, unsigned)
MALFORMED = "malformed"  # not a policy record
REPLAYED = "replayed"  # a signed, older version put back over a newer one

_decode = msgspec.json.Decoder(PolicyRecord).decode


class Opened(msgspec.Struct, frozen=True):
    """A stored value checked: the record when it can be trusted, else the problem and its details."""

    record: PolicyRecord | None
    problem: str = ""
    reason: str = ""


def _signature(keys: RecordKeys, domain: str, payload: dict[str, Any]) -> dict[str, str]:
    return {"kid": keys.kid, "sig": keys.sign(domain, payload)}


def seal_record(key: str, record: PolicyRecord, keys: RecordKeys) -> bytes:
    """The bytes to store under `key`: the record and its signature."""
    fields = msgspec.to_builtins(record)
    signature = _signature(keys, DOMAIN, {"key": key, "record": fields})
    return msgspec.json.encode({**fields, "signature": signature})


def seal_deletion(key: str, keys: RecordKeys) -> bytes:
    """The body of the delete marker for `key`."""
    return msgspec.json.encode({"deleted": key, "signature": _signature(keys, DELETE_DOMAIN, {"key": key})})


def _split(value: bytes | None) -> tuple[dict[str, Any], str, str] | str:
    """(the other members, kid, sig) of a stored JSON object, or why there are none."""
    try:
        fields = msgspec.json.decode(value or b"")
    except msgspec.DecodeError as exc:
        return f"not JSON ({exc})"
    if not isinstance(fields, dict):
        return f"expected a JSON object, got {type(fields).__name__}"
    signature = fields.pop("signature", None)
    if not isinstance(signature, dict) or not isinstance(signature.get("kid"), str) \
            or not isinstance(signature.get("sig"), str):
        return ""
    return fields, signature["kid"], signature["sig"]


def open_record(key: str, value: bytes | None, keys: RecordKeys) -> Opened:
    """The record stored under `key`, if its signature verifies with a trusted key."""
    split = _split(value)
    if isinstance(split, str):
        return Opened(None, MALFORMED, split) if split else Opened(None, UNSIGNED, "it carries no signature")
    fields, kid, sig = split
    problem = keys.check(DOMAIN, {"key": key, "record": fields}, kid, sig)
    if problem:
        return Opened(None, problem, f"signed by key {kid}, which is not trusted" if problem == UNKNOWN_KEY
                      else f"the signature (key {kid}) does not verify")
    try:
        return Opened(_decode(value or b""))
    except msgspec.DecodeError as exc:  # signed, so ours: a record from another version of the schema
        return Opened(None, MALFORMED, f"not a policy record ({exc})")


def check_deletion(key: str, value: bytes | None, keys: RecordKeys) -> Opened:
    """Whether the delete marker for `key` was signed by a trusted key (`record` is always None)."""
    split = _split(value)
    if isinstance(split, str):
        return Opened(None, UNSIGNED, "the delete marker carries no signature")
    _, kid, sig = split
    problem = keys.check(DELETE_DOMAIN, {"key": key}, kid, sig)
    return Opened(None, problem, f"the delete marker's signature (key {kid}) does not verify" if problem else "")
