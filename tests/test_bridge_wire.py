"""Wire structs and the tier catalog: exact error strings, aliases, fallback order."""

from __future__ import annotations

import json

import msgspec
import pytest

from bridge.inference.catalog import CATALOG_PATH, CatalogError, default_catalog, load_catalog, resolve
from bridge.inference.wire import (
    InferReply,
    InvalidInferRequest,
    decode_request,
    decode_verdict,
    encode,
    read_request,
)
from bridge.kernel.errors import GroqPolicyError
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, TIER_TARGET_MS, TIERS


def test_request_round_trip_and_defaults():
    req = decode_request(b'{"question": "pii?", "context": {"a": [1, 2]}, "deadline_ms": 300}')
    assert (req.question, req.context, req.deadline_ms, req.constitutional_hash) == ("pii?", {"a": [1, 2]}, 300, CONSTITUTIONAL_HASH)
    assert read_request(encode(req)) == req


@pytest.mark.parametrize(
    "body, error",
    [
        (b'{"question": 1}', "Expected `str`, got `int` - at `$.question`"),
        (b'{"context": {}}', "Object missing required field `question`"),
        (b'{"question": "q", "deadline_ms": "soon"}', "Expected `int | null`, got `str` - at `$.deadline_ms`"),
        (b'{"question": "q", "tenant": "x"}', "Object contains unknown field `tenant`"),
    ],
)
def test_request_type_errors_name_the_path(body, error):
    with pytest.raises(msgspec.ValidationError) as exc:
        decode_request(body)
    assert str(exc.value) == error


@pytest.mark.parametrize(
    "body, code, message",
    [
        ({"question": "q", "constitutional_hash": "deadbeef"}, "constitutional_hash_mismatch",
         f"constitutional_hash: unknown constitution (want: {CONSTITUTIONAL_HASH}, got: deadbeef)"),
        ({"question": "   "}, "empty_question", "question: must not be empty"),
        # ranges declared on the struct, reported with the field, the range and the value
        ({"question": "q", "deadline_ms": 0}, "bad_deadline", "deadline_ms: must be within 1..120000, got 0"),
        ({"question": "q", "deadline_ms": 120_001}, "bad_deadline", "deadline_ms: must be within 1..120000, got 120001"),
        ({"question": "q", "max_tokens": 0}, "bad_max_tokens", "max_tokens: must be within 1..65536, got 0"),
        ({"question": "q", "temperature": -0.5}, "bad_temperature", "temperature: must be within 0..2, got -0.5"),
        ({"question": "q", "temperature": 2.5}, "bad_temperature", "temperature: must be within 0..2, got 2.5"),
        # a wrong type in a ranged field is a type error, in msgspec's words
        ({"question": "q", "deadline_ms": 1.5}, "invalid_request", "body: Expected `int | null`, got `float` - at `$.deadline_ms`"),
        ({"question": "q", "temperature": True}, "invalid_request", "body: Expected `float | null`, got `bool` - at `$.temperature`"),
        (["q"], "invalid_request", "body: Expected `object`, got `array`"),
    ],
)
def test_request_errors_are_422_naming_the_field(body, code, message):
    with pytest.raises(InvalidInferRequest) as exc:
        read_request(json.dumps(body).encode())
    assert (exc.value.status, exc.value.code, exc.value.message) == (422, code, message)


def test_request_bounds_are_inclusive():
    req = read_request(b'{"question": "q", "deadline_ms": 120000, "max_tokens": 1, "temperature": 2}')
    assert (req.deadline_ms, req.max_tokens, req.temperature) == (120_000, 1, 2.0)


def test_a_body_that_is_not_json_is_400():
    with pytest.raises(InvalidInferRequest) as exc:
        read_request(b"{nope", label="request")
    assert (exc.value.status, exc.value.code) == (400, "invalid_json")
    assert exc.value.message.startswith("request: not JSON (")


@pytest.mark.parametrize(
    "raw, ok",
    [
        ('{"decision": "deny", "confidence": 0.9, "rationale": "r"}', True),
        ('{"decision": "yes", "confidence": 0.9, "rationale": "r"}', False),
        ('{"decision": "allow", "confidence": 7, "rationale": "r"}', False),
        ('{"decision": "allow", "confidence": -0.1, "rationale": "r"}', False),
        ('{"decision": "allow", "confidence": 0.5}', False),
        ('{"decision": "allow", "confidence": 0.5, "rationale": "r", "extra": 1}', False),
        ('{"decision": "allow", "confidence": 0.5, "rationale": "unterminated', False),
    ],
)
def test_verdict_is_strict(raw, ok):
    if ok:
        assert decode_verdict(raw).decision == "deny"
    else:
        with pytest.raises(msgspec.DecodeError):  # ValidationError is a DecodeError
            decode_verdict(raw)


def test_reply_encoding_omits_unset_alias_fields():
    out = json.loads(encode(InferReply(decision="allow", confidence=0.9, rationale="r", model="m", tier="fast")))
    assert "requested_model" not in out and "resolved_from" not in out
    assert out["cached"] is False and out["emulated"] is False and out["constitutional_hash"] == CONSTITUTIONAL_HASH


def test_catalog_has_the_seed_tiers_and_targets():
    cat = default_catalog()
    assert tuple(cat.tiers) == TIERS
    assert {t: cat.tiers[t].latency_target_ms for t in TIERS} == {"nano": 1, "fast": 2, "balanced": 3, "premium": 5, "reasoning": 1000}
    assert "latency_target_ms" not in CATALOG_PATH.read_text()  # the vocabulary's, not restated
    assert {t: cat.tiers[t].latency_target_ms for t in TIERS} == TIER_TARGET_MS
    for spec in cat.models.values():
        assert spec.price_input_per_mtok > 0 and spec.price_output_per_mtok > 0 and spec.typical_latency_ms >= 100
    assert cat.models["openai/gpt-oss-120b"].json_schema_strict and not cat.models["allam-2-7b"].json_schema_strict


@pytest.mark.parametrize(
    "name, want",
    [
        ("openai/gpt-oss-20b", ("openai/gpt-oss-20b", None)),
        ("llama-3.1-8b-instant", ("openai/gpt-oss-20b", "llama-3.1-8b-instant")),
        ("llama-3.3-70b-versatile", ("openai/gpt-oss-120b", "llama-3.3-70b-versatile")),
        ("qwen/qwen3-32b", ("qwen/qwen3.6-27b", "qwen/qwen3-32b")),
        ("moonshotai/kimi-k2-instruct", ("openai/gpt-oss-120b", "moonshotai/kimi-k2-instruct")),
    ],
)
def test_resolve_retired_names(name, want):
    assert resolve(name) == want


def test_resolve_unknown_model():
    with pytest.raises(CatalogError, match=r"^model 'gpt-5': not in the catalog \(known: allam-2-7b, "):
        resolve("gpt-5")


def test_candidates_put_preferred_first_then_tier_then_fallback_tier():
    cat = default_catalog()
    assert cat.candidates("nano") == ["allam-2-7b", "openai/gpt-oss-20b"]
    assert cat.candidates("fast") == ["openai/gpt-oss-20b", "qwen/qwen3.6-27b", "qwen/qwen3.8-27b"]
    assert cat.candidates("premium", "qwen/qwen3-32b") == ["qwen/qwen3.6-27b", "openai/gpt-oss-120b", "qwen/qwen3.8-27b"]


def test_models_listing_has_the_seed_shape():
    rows = default_catalog().models_listing()
    assert {"model_name", "performance_tier", "max_tokens", "cost_per_token", "typical_latency_ms"} <= set(rows[0])
    assert {r["performance_tier"] for r in rows} == set(TIERS)


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda d: d["tiers"].pop("nano"),
         "tiers: missing nano (every tier needs models: nano, fast, balanced, premium, reasoning)"),
        (lambda d: d["tiers"].update(turbo=d["tiers"]["fast"]),
         "tiers: unknown turbo (the tiers are: nano, fast, balanced, premium, reasoning)"),
        (lambda d: d["tiers"]["fast"].update(models=["gpt-9"]), "tiers.fast.models: unknown model 'gpt-9'"),
        (lambda d: d["tiers"]["fast"].update(models=[]), "tiers.fast.models: empty (expected at least one model)"),
        (lambda d: d["tiers"]["fast"].update(fallback_tier="turbo"), "tiers.fast.fallback_tier: unknown tier 'turbo'"),
        (lambda d: d["aliases"].update({"old": {"to": "nope"}}), "aliases.old: resolves to unknown model 'nope'"),
        (lambda d: d["tiers"]["fast"].update(reasoning_effort="extreme"),
         "Invalid enum value 'extreme' - at `$.tiers[...].reasoning_effort`"),
    ],
)
def test_catalog_errors(tmp_path, mutate, error):
    data = json.loads(CATALOG_PATH.read_text())
    mutate(data)
    p = tmp_path / "tiers.json"
    p.write_text(json.dumps(data))
    with pytest.raises(CatalogError) as exc:
        load_catalog(p)
    assert str(exc.value) == f"{p}: {error}"
    assert isinstance(exc.value, GroqPolicyError)  # one exception family


def test_catalog_order_is_the_vocabularys(tmp_path):
    data = json.loads(CATALOG_PATH.read_text())
    data["tiers"] = dict(reversed(data["tiers"].items()))
    p = tmp_path / "tiers.json"
    p.write_text(json.dumps(data))
    assert tuple(load_catalog(p).tiers) == TIERS
