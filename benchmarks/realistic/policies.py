"""The realistic policy classes: Rego sources, data documents and inputs, written for these benchmarks.

Each class is a dict with `modules` ({file name: Rego source}), `data` (the data document), `input`
and `query` (the rule every contender evaluates). Everything is generated deterministically, so
every run and every contender sees the same bytes.

- admission   a Kubernetes admission review of a pod with five containers; deny messages built
              with `sprintf` (the shape of Gatekeeper/kube-mgmt policies)
- api_authz   an HS256 bearer token checked with `io.jwt.decode_verify`, then ~50 route rules
              matched with `glob.match` and a few with `regex.match` (the shape of Envoy/API gateway
              authorization)
- data_filter a 10,000-item `data` document filtered by a comprehension that keeps ~450 items
              (the shape of "which rows may this user see")
- library     this project's own policy library: constitutional pre-validation, two rules-only
              policies and post-validation of both decisions, as the pipeline runs them
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent

ADMISSION = """package bench.admission

import rego.v1

trusted_registries := ["registry.acme.example/", "ghcr.io/acme/", "gcr.io/acme-prod/"]

required_labels := ["app", "owner", "cost-center"]

blocked_capabilities := {"SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"}

pod := input.request.object

containers contains c if some c in pod.spec.containers

containers contains c if some c in pod.spec.initContainers

_trusted(image) if {
	some prefix in trusted_registries
	startswith(image, prefix)
}

_tag(image) := t if {
	parts := split(image, "/")
	last := parts[count(parts) - 1]
	contains(last, ":")
	t := split(last, ":")[1]
} else := ""

deny contains msg if {
	some c in containers
	not _trusted(c.image)
	msg := sprintf("container %s: image %s does not come from a trusted registry", [c.name, c.image])
}

deny contains msg if {
	some c in containers
	tag := _tag(c.image)
	tag in {"", "latest"}
	msg := sprintf("container %s: image %s must be pinned to a version tag", [c.name, c.image])
}

deny contains msg if {
	some c in containers
	c.securityContext.privileged == true
	msg := sprintf("container %s: privileged containers are not allowed", [c.name])
}

deny contains msg if {
	some c in containers
	not c.securityContext.runAsNonRoot == true
	not pod.spec.securityContext.runAsNonRoot == true
	msg := sprintf("container %s: must set runAsNonRoot", [c.name])
}

deny contains msg if {
	some c in containers
	not c.securityContext.allowPrivilegeEscalation == false
	msg := sprintf("container %s: must set allowPrivilegeEscalation to false", [c.name])
}

deny contains msg if {
	some c in containers
	some cap in c.securityContext.capabilities.add
	cap in blocked_capabilities
	msg := sprintf("container %s: capability %s is not allowed", [c.name, cap])
}

deny contains msg if {
	some c in containers
	some kind in ["cpu", "memory"]
	not c.resources.limits[kind]
	msg := sprintf("container %s: missing %s limit", [c.name, kind])
}

deny contains msg if {
	some c in containers
	mem := c.resources.limits.memory
	endswith(mem, "Mi")
	mib := to_number(trim_suffix(mem, "Mi"))
	mib > 2048
	msg := sprintf("container %s: memory limit %d Mi is above the 2048 Mi ceiling", [c.name, mib])
}

deny contains msg if {
	some v in pod.spec.volumes
	v.hostPath
	msg := sprintf("volume %s: hostPath %s is not allowed", [v.name, v.hostPath.path])
}

deny contains msg if {
	pod.spec.hostNetwork == true
	msg := sprintf("pod %s/%s: hostNetwork is not allowed", [pod.metadata.namespace, pod.metadata.name])
}

deny contains msg if {
	some label in required_labels
	not pod.metadata.labels[label]
	msg := sprintf("pod %s/%s: missing required label %s", [pod.metadata.namespace, pod.metadata.name, label])
}

result := {"allowed": count(deny) == 0, "messages": sort(deny)}
"""


def _admission_input() -> dict[str, Any]:
    def container(name: str, image: str, **extra: Any) -> dict[str, Any]:
        c = {"name": name, "image": image, "ports": [{"containerPort": 8080}],
             "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
             "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
             "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "REGION", "value": "eu-west-1"}]}
        c.update(extra)
        return c

    containers = [
        container("api", "registry.acme.example/shop/api:2.14.1"),
        container("sidecar", "docker.io/library/envoy:latest"),
        container("cache", "ghcr.io/acme/redis:7.2", resources={"limits": {"memory": "4096Mi"}}),
        container("metrics", "gcr.io/acme-prod/exporter:1.3.0",
                  securityContext={"privileged": True, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}),
        container("worker", "registry.acme.example/shop/worker"),
    ]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "operation": "CREATE",
        "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "shop",
        "userInfo": {"username": "system:serviceaccount:ci:deployer", "groups": ["system:serviceaccounts"]},
        "object": {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "shop-api-7d9f", "namespace": "shop", "labels": {"app": "shop-api", "owner": "team-shop"}},
                   "spec": {"containers": containers, "initContainers": [],
                            "volumes": [{"name": "config", "configMap": {"name": "shop"}},
                                        {"name": "docker-sock", "hostPath": {"path": "/var/run/docker.sock"}}]}}}}


JWT_SECRET = "bench-hs256-secret-0123456789abcdef"


def _jwt(claims: dict[str, Any]) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


def _authz_routes() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    resources = ["orders", "customers", "invoices", "products", "carts", "payments", "shipments", "reviews",
                 "coupons", "inventory", "reports", "webhooks"]
    globs = []
    for i, res in enumerate(resources):
        globs.append({"id": f"{res}-list", "methods": ["GET"], "path": f"/api/v1/{res}", "scope": f"{res}:read"})
        globs.append({"id": f"{res}-read", "methods": ["GET"], "path": f"/api/v1/{res}/*", "scope": f"{res}:read"})
        globs.append({"id": f"{res}-write", "methods": ["PUT", "PATCH", "DELETE"], "path": f"/api/v1/{res}/*", "scope": f"{res}:write"})
        globs.append({"id": f"{res}-sub", "methods": ["GET", "POST"], "path": f"/api/v1/{res}/*/{resources[(i + 1) % len(resources)]}/**",
                      "scope": f"{res}:read"})
    regexes = [
        {"id": "report-month", "methods": ["GET"], "pattern": "^/api/v2/reports/[0-9]{4}-(0[1-9]|1[0-2])$", "scope": "reports:read"},
        {"id": "order-item", "methods": ["GET"], "pattern": "^/api/v2/orders/[0-9a-f]{8}/items/[0-9]+$", "scope": "orders:read"},
        {"id": "admin", "methods": ["GET", "POST", "DELETE"], "pattern": "^/admin/.*$", "scope": "admin"},
        {"id": "health", "methods": ["GET"], "pattern": "^/(healthz|readyz|livez)$", "scope": "public"},
    ]
    return globs[:48], regexes


API_AUTHZ_HEAD = """package bench.authz

import rego.v1

jwt_secret := "%s"

"""

API_AUTHZ_BODY = """
token := t if {
	h := input.headers.authorization
	startswith(h, "Bearer ")
	t := substring(h, 7, -1)
}

claims := payload if {
	[valid, _, payload] := io.jwt.decode_verify(token, {"secret": jwt_secret, "alg": "HS256"})
	valid
}

granted(scope) if scope == "public"

granted(scope) if scope in claims.scopes

matched contains r.id if {
	some r in glob_routes
	glob.match(r.path, ["/"], input.path)
	input.method in r.methods
	granted(r.scope)
}

matched contains r.id if {
	some r in regex_routes
	regex.match(r.pattern, input.path)
	input.method in r.methods
	granted(r.scope)
}

tenant_ok if regex.match(`^[a-z][a-z0-9-]{2,31}$`, claims.tenant)

request_id_ok if regex.match(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`, input.headers["x-request-id"])

default allow := false

allow if {
	count(matched) > 0
	tenant_ok
	request_id_ok
}

result := {"allow": allow, "subject": claims.sub, "tenant": claims.tenant, "routes": sort(matched)}
"""


def _authz_source() -> str:
    globs, regexes = _authz_routes()
    return (API_AUTHZ_HEAD % JWT_SECRET + "glob_routes := " + json.dumps(globs, indent=1) + "\n\nregex_routes := "
            + json.dumps(regexes, indent=1) + "\n" + API_AUTHZ_BODY)


def _authz_input() -> dict[str, Any]:
    token = _jwt({"sub": "svc-checkout", "tenant": "acme-shop", "iss": "https://auth.acme.example",
                  "scopes": ["orders:read", "orders:write", "customers:read", "carts:read", "payments:read"], "exp": 4102444800})
    return {"method": "GET", "path": "/api/v1/orders/8f2a91c3/customers/42/addresses",
            "headers": {"authorization": f"Bearer {token}", "x-request-id": "3b1f7c2e-8d4a-4f6b-9c1d-2e5a7b9c0d1f",
                        "user-agent": "checkout/2.3.1"}}


DATA_FILTER = """package bench.filter

import rego.v1

visible := [item.id |
	some item in data.inventory.items
	item.tenant == input.tenant
	item.status == "active"
	item.level <= input.clearance
]

result := {"count": count(visible), "ids": visible}
"""


def _filter_data(n: int = 10_000) -> dict[str, Any]:
    """`n` inventory items (~104 bytes of JSON each: 10,000 make ~1 MB)."""
    rnd = random.Random(18)
    statuses = ["active", "active", "active", "archived"]
    items = [{"id": f"item-{i:05d}", "tenant": f"tenant-{rnd.randrange(10)}", "status": rnd.choice(statuses),
              "level": rnd.randrange(10), "price": round(rnd.uniform(1, 500), 2),
              "tags": rnd.sample(["red", "blue", "eu", "us", "sale", "new"], 2)} for i in range(n)]
    return {"inventory": {"items": items}}


LIBRARY = """package bench.library

import rego.v1

import data.groqpolicy.constitution
import data.groqpolicy.policies.risk_management
import data.groqpolicy.policies.security_policies

pre := v if v := constitution.pre_validation with input as input.accountability

risk := v if v := risk_management.decision with input as input.context

security := v if v := security_policies.decision with input as input.context

post_risk := v if v := constitution.post_validation with input as {"decision": risk, "oversight": input.context.oversight}

post_security := v if v := constitution.post_validation with input as {"decision": security, "oversight": input.context.oversight}

result := {"pre": pre, "risk": post_risk, "security": post_security}
"""


def _library() -> tuple[dict[str, str], dict[str, Any]]:
    """Every non-test module of `rego/` and the data documents beside them (merged by directory)."""
    rego = ROOT / "rego"
    modules = {str(p.relative_to(rego)).replace("/", "__"): p.read_text()
               for p in sorted(rego.rglob("*.rego")) if not p.name.endswith("_test.rego")}
    data: dict[str, Any] = {}
    for p in sorted(rego.rglob("data.json")):
        node = data
        for part in p.parent.relative_to(rego).parts:
            node = node.setdefault(part, {})
        node.update(json.loads(p.read_text()))
    modules["bench_library.rego"] = LIBRARY
    return modules, data


def _library_input() -> dict[str, Any]:
    from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH

    principal = {"id": "svc-payments", "roles": ["operator"], "mfa": True, "source_ip": "10.2.3.4"}
    return {
        "accountability": {"constitutional_hash": CONSTITUTIONAL_HASH, "principal": principal, "oversight": {"escalation": "risk-desk"}},
        "context": {"constitutional_hash": CONSTITUTIONAL_HASH, "principal": principal, "oversight": {"escalation": "risk-desk"},
                    "action": "restart", "resource": {"type": "services", "classification": "internal"},
                    "transaction": {"amount": 2500, "currency": "EUR", "country": "DE"},
                    "risk": {"score": 12, "factors": ["new_device"]}},
    }


def classes() -> dict[str, dict[str, Any]]:
    """name -> {modules, data, input, query}; `query` is a rule path under `data`, dotted."""
    lib_modules, lib_data = _library()
    return {
        "admission": {"modules": {"admission.rego": ADMISSION}, "data": {}, "input": _admission_input(),
                      "query": "bench.admission.result"},
        "api_authz": {"modules": {"authz.rego": _authz_source()}, "data": {}, "input": _authz_input(), "query": "bench.authz.result"},
        "data_filter": {"modules": {"filter.rego": DATA_FILTER}, "data": _filter_data(), "input": {"tenant": "tenant-3", "clearance": 5},
                        "query": "bench.filter.result"},
        "library": {"modules": lib_modules, "data": lib_data, "input": _library_input(), "query": "bench.library.result"},
    }
