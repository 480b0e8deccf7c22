"""The constitution's two stages of every evaluation, memoised per bundle revision.

Pre-validation (`groqpolicy/constitution/pre_validation`) sees `PRE_FIELDS` of the request's
context and the call's constitutional hash (its input contract: rego/constitution/constitution.rego);
post-validation sees what the policies propose. Both are pure functions of their input and the
bundle (no time, no `http.send` in the constitution), and requests repeat them a lot (one principal
sends many; proposals repeat the same decision and reasons), so each answer is kept under a key
that holds the revision and everything the input is made of. Bounded: a memo is cleared when full.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import msgspec

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.evaluation.decision import PostOutcome, PreOutcome, Proposal, post_outcome, pre_outcome
from controlplane.evaluation.interfaces import Revision
from controlplane.evaluation.scheduling import run_batched

PRE = "groqpolicy/constitution/pre_validation"
POST = "groqpolicy/constitution/post_validation"
PRE_MANY = "groqpolicy/constitution/pre_validations"
POST_MANY = "groqpolicy/constitution/post_validations"
PRE_FIELDS = ("principal", "oversight", "audit", "options")  # `pre_key` relies on the principal coming first
MEMO_SIZE = 4096
MemoKey = tuple[Any, ...]
_O = TypeVar("_O")
_encode = msgspec.json.Encoder(order="deterministic").encode
_ABSENT = b""  # a field the context does not have (no JSON encoding is empty)


def pre_input(context: dict[str, Any], constitutional_hash: str) -> dict[str, Any]:
    """The constitution's pre-validation input for a request: `PRE_FIELDS` of its context and the
    call's constitutional hash (not one the context may carry)."""
    out = {k: context[k] for k in PRE_FIELDS if k in context}
    out["constitutional_hash"] = constitutional_hash
    return out


def pre_key(revision: str, constitutional_hash: str, context: dict[str, Any]) -> MemoKey:
    """What pre-validation's answer depends on: the revision and `pre_input` (a text field as it
    is, anything else by its JSON; bytes and text never compare equal), of the principal only
    whether it is named (`named`)."""
    key: list[Any] = [revision, constitutional_hash, named(context.get("principal"))]
    for k in PRE_FIELDS[1:]:
        v = context.get(k, _ABSENT)
        key.append(v if type(v) is str or v is _ABSENT else _encode(v))
    return tuple(key)


def named(principal: Any) -> bool:
    """Whether a request names an accountable principal as pre-validation reads it (`_principal_id`
    in rego/constitution/constitution.rego): a non-empty string, or an object whose `id` is one.
    That is all pre-validation asks of the principal (tests/test_rego_library.py holds the Rego to
    it), so its answers are kept per named-or-not, not per principal: a batch of many principals'
    requests costs one evaluation, not one each."""
    if type(principal) is str:
        return principal != ""
    if type(principal) is dict:
        found = principal.get("id")
        return type(found) is str and found != ""
    return False


def post_key(revision: str, constitutional_hash: str, proposal: Proposal, context: dict[str, Any]) -> MemoKey:
    """What post-validation's answer depends on: the revision, the proposal and the request's oversight."""
    oversight = context.get("oversight")
    return (revision, constitutional_hash, proposal.decision, proposal.confidence, proposal.model_based,
            tuple(proposal.reasons), _encode(oversight) if isinstance(oversight, dict) else None)


def post_input(key: MemoKey) -> dict[str, Any]:
    """The constitution's post-validation input for its memo key."""
    _, constitutional_hash, decision, confidence, model_based, reasons, oversight = key
    proposed = {"decision": decision, "reasons": list(reasons), "confidence": confidence,
                "constitutional_hash": CONSTITUTIONAL_HASH, "model_based": model_based}
    out: dict[str, Any] = {"decision": proposed, "constitutional_hash": constitutional_hash}
    if oversight is not None:
        out["oversight"] = msgspec.json.decode(oversight)
    return out


class Constitution:
    """The memoised pre- and post-validation stages of one pipeline (callable from any thread:
    a lost race only evaluates a key twice)."""

    def __init__(self) -> None:
        self._pre: dict[MemoKey, PreOutcome] = {}
        self._post: dict[MemoKey, PostOutcome] = {}

    def pre_validate(self, evaluator: Revision, revision: str, constitutional_hash: str,
                     contexts: list[dict[str, Any]]) -> list[PreOutcome]:
        """Stage 2: a pre-validation outcome per context."""
        outcomes, _ = self._stage(evaluator, self._pre, [pre_key(revision, constitutional_hash, c) for c in contexts],
                                  lambda key, j: pre_input(contexts[j], constitutional_hash), PRE, PRE_MANY,
                                  "pre-validation", pre_outcome)
        return cast("list[PreOutcome]", outcomes)  # every context has a key

    def post_validate(self, evaluator: Revision, keys: list[MemoKey | None]) -> tuple[list[PostOutcome | None], list[float]]:
        """Stage 5: a post-validation outcome per proposal key (None: no proposal to validate), and
        the WASM µs each cost."""
        return self._stage(evaluator, self._post, keys, lambda key, j: post_input(key), POST, POST_MANY,
                           "post-validation", post_outcome)

    @staticmethod
    def _stage(evaluator: Revision, memo: dict[MemoKey, _O], keys: list[MemoKey | None],
               input_of: Callable[[MemoKey, int], Any], single: str, many: str, stage: str,
               outcome_of: Callable[[Any], _O]) -> tuple[list[_O | None], list[float]]:
        """A constitution entrypoint for items given by their memo keys: a memoised answer costs
        nothing; each missing key is evaluated once (`input_of(key, first item with it)`), all of
        them in one batched call whose time is shared among them. An evaluation that could not run
        is a deny and is not memoised."""
        outcomes: list[_O | None] = [None if key is None else memo.get(key) for key in keys]
        costs = [0.0] * len(keys)
        misses: dict[MemoKey, list[int]] = {}
        for j, key in enumerate(keys):
            if key is not None and outcomes[j] is None:
                misses.setdefault(key, []).append(j)
        if not misses:
            return outcomes, costs
        missing = list(misses)
        t0 = time.perf_counter_ns()
        values, errors = run_batched(evaluator, single, many, [input_of(key, misses[key][0]) for key in missing], wrapped=False)
        us = (time.perf_counter_ns() - t0) / 1000 / len(missing)
        for key, doc, err in zip(missing, values, errors, strict=True):
            if err:
                doc = {"decision": "deny", "reasons": [f"deny: constitutional {stage} could not run: {err}"], "confidence": 1}
            found = outcome_of(doc)
            if not err and isinstance(doc, dict):
                if len(memo) >= MEMO_SIZE:
                    memo.clear()
                memo[key] = found
            for j in misses[key]:
                outcomes[j] = found
                costs[j] = us
        return outcomes, costs
