"""providers.aws.sign_req (topdown providers.go over OPA's internal/providers/aws SignV4).

SigV4 by hand, with hmac and hashlib, on purpose: the builtin must give OPA's exact signature, and
OPA's canonical request is its own, not the reference one a library such as botocore builds (the
query string is signed as written, not sorted and re-encoded; header values are not trimmed;
every request header but three is signed). A library would sign the same request differently.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.opawasm.builtins.operands import need_obj, type_name
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.gocompat import neturl
from bridge.opawasm.gocompat.errors import GoError
from bridge.opawasm.values import RegoSet, encode_json, rego_repr, to_json

_REQUIRED_CONFIG = ("aws_access_key", "aws_region", "aws_secret_access_key", "aws_service")
_REQUEST_KEYS = frozenset({
    "method", "url", "body", "enable_redirect", "force_json_decode", "force_yaml_decode", "headers",
    "raw_body", "tls_use_system_certs", "tls_ca_cert", "tls_ca_cert_file", "tls_ca_cert_env_variable",
    "tls_client_cert", "tls_client_cert_file", "tls_client_cert_env_variable", "tls_client_key",
    "tls_client_key_file", "tls_client_key_env_variable", "tls_insecure_skip_verify", "tls_server_name",
    "timeout", "cache", "force_cache", "force_cache_duration_seconds", "raise_error", "caching_mode",
    "max_retry_attempts", "cache_ignored_headers",
})
_UNSIGNED_HEADERS = frozenset({"authorization", "user-agent", "x-amzn-trace-id"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _names(keys: list[Any]) -> str:
    return rego_repr(RegoSet(keys))


def _text(v: Any) -> str:
    return v if isinstance(v, str) else ""  # topdown's stringFromTerm


def _check_config(config: dict[str, Any]) -> None:
    missing = [k for k in _REQUIRED_CONFIG if k not in config]
    if missing:
        raise BuiltinError(f"operand 2 missing required AWS config parameters(s): {_names(missing)}")
    invalid = [k for k in _REQUIRED_CONFIG if not isinstance(config[k], str)]
    if invalid:
        raise BuiltinError(f"operand 2 invalid values for required AWS config parameters(s): {_names(invalid)}")


def _check_request(req: dict[str, Any]) -> None:
    unknown = [k for k in req if k not in _REQUEST_KEYS]
    if unknown:
        raise BuiltinError(f"operand 1 invalid request parameters(s): {_names(unknown)}")
    missing = [k for k in ("method", "url") if k not in req]
    if missing:
        raise BuiltinError(f"operand 1 missing required request parameters(s): {_names(missing)}")


def _body(req: dict[str, Any]) -> bytes:
    if "raw_body" in req:
        return _text(req["raw_body"]).encode()
    if "body" in req:
        # Go's json.Marshal: sorted keys, and <, >, & and the two line separators escaped
        text = encode_json(to_json(req["body"])).decode()
        for ch in "<>&\u2028\u2029":
            text = text.replace(ch, f"\\u{ord(ch):04x}")
        return text.encode()
    return b""


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def sign_v4(headers: dict[str, str], method: str, url: neturl.URL, body: bytes, service: str,
            config: dict[str, Any], when: datetime, unsigned_payload: bool) -> tuple[str, dict[str, str]]:
    """OPA's SignV4: the Authorization header and the x-amz-* headers it adds."""
    content_sha = "UNSIGNED-PAYLOAD" if unsigned_payload else hashlib.sha256(body).hexdigest()
    day, stamp = when.strftime("%Y%m%d"), when.strftime("%Y%m%dT%H%M%SZ")
    aws_headers = {"host": url.host, "x-amz-date": stamp}
    if service in ("s3", "glacier"):
        aws_headers["x-amz-content-sha256"] = content_sha
    if token := _text(config.get("aws_session_token")):
        aws_headers["x-amz-security-token"] = token
    signed = dict(aws_headers)
    for k, v in headers.items():
        if k.lower() not in _UNSIGNED_HEADERS:
            signed[k.lower()] = v
    names = sorted(signed)
    canonical = "\n".join([method, url.escaped_path(), url.raw_query, *(f"{k}:{signed[k]}" for k in names), "",
                           ";".join(names), content_sha])
    region, secret = config["aws_region"], config["aws_secret_access_key"]
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = b"AWS4" + secret.encode()
    for part in (day, region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = (f"AWS4-HMAC-SHA256 Credential={config['aws_access_key']}/{scope},"
            f"SignedHeaders={';'.join(names)},Signature={signature}")
    return auth, aws_headers


def _request_fields(req: dict[str, Any]) -> tuple[dict[str, str], str, neturl.URL]:
    headers_v = req.get("headers", {})
    if not isinstance(headers_v, dict):
        raise BuiltinError(f"operand 0 must be object but got {type_name(headers_v)}")
    invalid = [k for k in ("url", "method") if not isinstance(req[k], str)]
    if invalid:
        raise BuiltinError(f"operand 1 invalid values for required request parameters(s): {_names(invalid)}")
    try:
        url = neturl.parse(req["url"])
    except GoError as exc:
        raise BuiltinError(str(exc)) from None
    headers = {(k if isinstance(k, str) else ""): _text(v) for k, v in headers_v.items()}
    return headers, req["method"], url


@builtin("providers.aws.sign_req")
def sign_req(ctx: EvalContext, request: Any, aws_config: Any, time_ns: Any) -> dict[str, Any]:
    req = need_obj(request, 1)
    config = need_obj(aws_config, 1)
    _check_config(config)
    if isinstance(time_ns, bool) or not isinstance(time_ns, (int, float)):
        raise BuiltinError(f"operand 1 must be number but got {type_name(time_ns)}")
    if not isinstance(time_ns, int) or not -(2**63) <= time_ns < 2**63:
        raise BuiltinError("operand 3 could not convert time_ns value into a unix timestamp")
    _check_request(req)
    headers, method, url = _request_fields(req)
    unsigned = config.get("disable_payload_signing", False)
    if not isinstance(unsigned, bool):
        raise BuiltinError("operand 2 invalid value for 'disable_payload_signing' in AWS config")
    when = _EPOCH + timedelta(microseconds=time_ns // 1000)
    auth, aws_headers = sign_v4(headers, method, url, _body(req), config["aws_service"], config, when, unsigned)
    return {**req, "headers": {**headers, "Authorization": auth, **aws_headers}}
