"""How the CLI prints a policy's certificate (`groqpolicy policies show`, and after `create`)."""

from __future__ import annotations

from typing import Any


def certificate_lines(cert: dict[str, Any] | None) -> list[str]:
    """The certificate as lines a person reads: each check, the review, the override, the signature."""
    if not cert:
        return ["certificate: none (stored before policies were certified; write it again to certify it)"]
    state = "certified" if cert.get("certified") else "NOT certified"
    lines = [f"certificate: {state} (policy version {cert.get('policy_version')}, issued {cert.get('issued_at')})",
             f"  policy sha256  {cert.get('policy_sha256')}",
             f"  principles     {', '.join(cert.get('principles') or []) or '(none declared)'}"]
    for check in cert.get("checks") or []:
        detail = ", ".join(f"{k} {v}" for k, v in sorted((check.get("detail") or {}).items()) if not isinstance(v, list))
        lines.append(f"  check {check.get('name', '?'):<11} {'pass' if check.get('passed') else 'FAIL'}"
                     + (f"  ({detail})" if detail else ""))
        lines += [f"      - {p}" for p in check.get("problems") or []]
    review = cert.get("review")
    if review:
        lines.append(f"  model review   {review.get('decision')} by {review.get('model')} ({review.get('tier')}), "
                     f"confidence {review.get('confidence')}" + (" [emulated]" if review.get("emulated") else ""))
        lines += [f"      - {_finding(f)}" for f in review.get("findings") or []]
    else:
        lines.append("  model review   none asked for")
    override = cert.get("override")
    if override:
        lines.append(f"  override       by {override.get('by')} at {override.get('at')}: {override.get('reason')}")
    signature = cert.get("signature") or {}
    lines.append(f"  signed by      {signature.get('kid', '(unsigned)')} (Ed25519 record key)")
    return lines


def policy_lines(policy: dict[str, Any]) -> list[str]:
    head = (f"{policy['rule_id']}  {policy['name']}  {policy['policy_type']}  tier {policy['performance_tier']}  "
            f"version {policy.get('version')}  {'active' if policy.get('is_active') else 'inactive'}")
    return [head, f"entrypoint: {policy.get('entrypoint', '')}", *certificate_lines(policy.get("certificate"))]


def _finding(found: Any) -> str:
    """A review finding as a line: `principle (severity): text` (a version-1 certificate's is a sentence)."""
    if isinstance(found, dict):
        return f"{found.get('principle', '?')} ({found.get('severity', '?')}): {found.get('text', '')}"
    return str(found)
