"""The dashboard over real HTTP (no browser): who may see it, that every panel shows what the
control plane holds, that the charts carry the numbers of the evaluations made, and that a forged
audit record shows up as a broken link. The browser test is tests/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import re

import httpx
import nats
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.audit import AuditRecord
from controlplane.audit.records import seal
from controlplane.dashboard.auth import COOKIE
from controlplane.dashboard.charts import TierLatency, decisions_chart, latency_chart, percentile
from controlplane.dashboard.data import AuditRow, _metadata_blocks, decisions_over_time, library_policies
from tests.conftest import REPO_ROOT
from tests.controlplane_helpers import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    EVALUATE_TOKEN,
    bearer,
    make_settings,
    running_control_plane,
)

EXAMPLE_TYPES = ("constitutional_compliance", "data_governance", "ethical_constraints", "operational_policies",
                 "regulatory_compliance", "risk_management", "security_policies")


@pytest.fixture(scope="module")
def cp(tmp_path_factory, nats_server_module):
    url = nats_server_module.extra["url"]
    settings = make_settings(tmp_path_factory.mktemp("dash") / "state", nats_url=url)
    with running_control_plane(settings) as services:
        with httpx.Client(base_url=settings.base_url, timeout=30) as client:
            yield client, services, url


def evaluate(client: httpx.Client, tier: str) -> dict:
    r = client.post("/api/v1/evaluate", headers=bearer(EVALUATE_TOKEN), json={
        "input_context": {"principal": "alice"}, "policy_types": ["security_policies"], "performance_tier": tier,
        "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 200, r.text
    return r.json()


def sum_attr(html: str, selector_attr: str, value: str, count_attr: str = "data-count") -> int:
    return sum(int(m) for m in re.findall(rf'<rect class="bar" {selector_attr}="{value}" {count_attr}="(\d+)"', html))


# ---- access ----------------------------------------------------------------------------------------
def test_anonymous_gets_a_401_login_page(cp):
    client, _, _ = cp
    r = client.get("/")
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert 'action="/dashboard/login"' in r.text and "401: sign in with a token that has the admin scope" in r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/dashboard/verify").status_code == 401


def test_a_token_without_admin_gets_403(cp):
    client, _, _ = cp
    r = client.get("/", headers=bearer(EVALUATE_TOKEN))
    assert r.status_code == 403
    assert "scope &#39;admin&#39; required; token &#39;evaluate&#39; has evaluate" in r.text


def test_login_sets_an_httponly_cookie_and_a_wrong_token_is_refused(cp):
    client, _, _ = cp
    r = client.post("/dashboard/login", data={"token": "not-a-token-at-all-000"}, follow_redirects=False)
    assert r.status_code == 401 and "invalid token" in r.text and COOKIE not in r.headers.get("set-cookie", "")
    r = client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    with httpx.Client(base_url=str(client.base_url), timeout=30) as fresh:
        # the printed link carries a one-time code, never the token
        assert fresh.post("/dashboard/codes").status_code == 401
        assert fresh.post("/dashboard/codes", headers=bearer(EVALUATE_TOKEN)).status_code == 403
        link = fresh.post("/dashboard/codes", headers=ADMIN_HEADERS).json()["url"]
        assert ADMIN_TOKEN not in link and "/dashboard/login?code=" in link
        assert fresh.get(f"/dashboard/login?token={ADMIN_TOKEN}", follow_redirects=False).status_code == 200  # the form
        r = fresh.get(link, follow_redirects=True)
        assert r.status_code == 200 and 'id="decisions-chart"' in r.text  # the cookie carried the session
        assert "No evaluations yet — try <code>groqpolicy evaluate" in r.text  # empty states say what to do
        assert "No audit records yet" in r.text and "no evaluations at this tier yet" in r.text
        out = fresh.post("/dashboard/logout", follow_redirects=False)
        assert out.status_code == 303 and 'Max-Age=0' in out.headers["set-cookie"]
        fresh.cookies.clear()
        again = fresh.get(link, follow_redirects=False)  # used once: worthless now
        assert again.status_code == 401 and "already used or expired" in again.text
    client.cookies.clear()


# ---- panels ------------------------------------------------------------------------------------------
def test_panels_show_what_the_control_plane_holds(cp):
    client, _, _ = cp
    made = [evaluate(client, "nano") for _ in range(3)] + [evaluate(client, "balanced") for _ in range(2)]
    r = client.get("/", headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    html = r.text
    # policies: every example of rego/policies with its type
    for ptype in EXAMPLE_TYPES:
        assert f'data-origin="library" data-type="{ptype}"' in html, ptype
    # decisions chart: one bar segment per outcome and bucket, counts adding up to the audit trail
    outcomes = {o: sum_attr(html, "data-outcome", o) for o in ("allow", "review", "deny", "other")}
    want: dict[str, int] = {}
    for m in made:
        want[m["decision"]] = want.get(m["decision"], 0) + 1
    assert {k: v for k, v in outcomes.items() if v} == want
    # latency per tier: the counts and p99 of what was made
    for tier, n in (("nano", 3), ("balanced", 2)):
        g = re.search(rf'<g class="tier-latency" data-tier="{tier}" data-count="(\d+)" data-p50="([\d.]+)" '
                      rf'data-p90="([\d.]+)" data-p99="([\d.]+)" data-target="([\d.]+)"', html)
        assert g, tier
        assert int(g.group(1)) == n
        lat = sorted(x["performance_metrics"]["total_latency_ms"] for x in made if x["performance_metrics"]["performance_tier"] == tier)
        assert float(g.group(4)) == pytest.approx(lat[-1], abs=1e-3)
    assert 'data-tier="premium"' in html and "no evaluations at this tier yet" in html
    # audit: newest first, chain intact, the evaluation ids are there
    assert 'id="chain-status">intact over the last' in html
    assert html.count('class="audit-row"') == len(made)
    # no worker runs in this module: the page says so instead of pretending
    assert 'data-mode="unreachable"' in html
    assert 'id="cache-rate" data-rate=""' in html
    # agents: none reported yet
    assert "No OPA agent has reported status yet" in html


def test_agents_panel_shows_each_agents_revision_and_status(cp):
    client, services, _ = cp
    services.store.activate("groqpolicy", "rev-dash-1", {"rego": b"x"})
    for agent, code in (("agent-ok", ""), ("agent-bad", "bundle_error")):
        doc = {"labels": {"id": agent, "agent": agent}, "bundles": {"groqpolicy": {
            "active_revision": "rev-dash-1" if not code else "rev-old", "code": code, "message": "signature mismatch" if code else ""}},
            "plugins": {"bundle": {"state": "OK"}, "decision_logs": {"state": "ERROR" if code else "OK", "message": "upload failed"}}}
        assert client.post("/status", json=doc, headers=bearer(ADMIN_TOKEN)).status_code == 204
    html = client.get("/", headers=bearer(ADMIN_TOKEN)).text
    ok = html.split('data-agent="agent-ok"', 1)[1].split("</tr>", 1)[0]
    bad = html.split('data-agent="agent-bad"', 1)[1].split("</tr>", 1)[0]
    assert "rev-dash-1" in ok and "current" in ok and "activated" in ok and "decision_logs" not in ok
    assert "decision_logs ERROR" in bad
    assert "rev-old" in bad and "behind" in bad and "bundle_error" in bad and "signature mismatch" in bad


def test_a_forged_audit_record_shows_as_a_broken_link(cp):
    client, _, url = cp
    evaluate(client, "fast")

    async def forge() -> None:
        nc = await nats.connect(url)
        try:
            _, data = seal(AuditRecord(source="api", decision="allow", evaluation_id="forged"), "f" * 64)
            await nc.jetstream().publish("audit.api.allow", data)
        finally:
            await nc.close()

    asyncio.run(forge())
    html = client.get("/", headers=bearer(ADMIN_TOKEN)).text
    assert re.search(r'id="chain-status">1 broken in the last \d+', html)
    # the forged record is the one row that does not link (the evaluation's own record, appended
    # by the background writer, may land before or after it)
    rows = re.findall(r'<tr class="audit-row" data-seq="(\d+)" data-chain="([^"]+)"', html)
    broken = [status for _, status in rows if status != "ok"]
    assert len(broken) == 1 and broken[0].startswith("prev_hash: does not link to the previous record"), rows
    v = client.get("/dashboard/verify", headers=bearer(ADMIN_TOKEN))
    assert v.status_code == 200 and 'id="verify-result">chain broken' in v.text


# ---- pure parts --------------------------------------------------------------------------------------
def test_library_policies_read_type_and_tier_from_metadata():
    rows = {ptype: (title, tier) for title, ptype, tier, _model, _file in library_policies(REPO_ROOT)}
    assert set(rows) == set(EXAMPLE_TYPES)
    assert rows["security_policies"][0] == "Security policies"
    assert all(tier in ("nano", "fast", "balanced", "premium", "reasoning") for _, tier in rows.values())
    assert _metadata_blocks("# METADATA\n# title: x\n# custom:\n#   a: 1\npackage p\n") == [{"title": "x", "custom": {"a": 1}}]


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (50, 90, 99)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_decisions_are_bucketed_by_time_in_the_smallest_window_that_holds_them():
    now = 10_000.5
    rows = [AuditRow(seq=i, record=AuditRecord(source="api", decision=d), chain="ok", when=now - age)
            for i, (d, age) in enumerate([("allow", 0.1), ("deny", 0.2), ("allow", 20.5), ("maybe", 0.3)])]
    buckets, window, step = decisions_over_time(rows, now)
    assert (window, step) == (60, 2) and len(buckets) == 30
    assert buckets[-1].start <= now < buckets[-1].start + step
    assert buckets[-1].counts == {"allow": 1, "deny": 1, "other": 1}
    assert [b.counts for b in buckets if b.start <= now - 20.5 < b.start + step] == [{"allow": 1}]
    assert sum(b.total for b in buckets) == 4
    svg = decisions_chart(buckets, step)
    assert svg.count('class="bar"') == 4 and 'data-outcome="other" data-count="1"' in svg
    older = [*rows, AuditRow(seq=9, record=AuditRecord(source="api", decision="deny"), chain="ok", when=now - 200)]
    assert decisions_over_time(older, now)[1:] == (300, 10)
    oldest = [*rows, AuditRow(seq=9, record=AuditRecord(source="api", decision="deny"), chain="ok", when=now - 2000)]
    assert decisions_over_time(oldest, now)[1:] == (3600, 60)


def test_latency_chart_marks_each_tier_and_its_target():
    svg = latency_chart([TierLatency(tier="nano", target_ms=1.0, count=2, p50=0.2, p90=0.4, p99=0.5, met=2),
                         TierLatency(tier="<x>", target_ms=5.0)])
    assert 'data-tier="nano" data-count="2" data-p50="0.2000"' in svg and 'data-target="1"' in svg
    assert "&lt;x&gt;" in svg and "<x>" not in svg  # labels are escaped


def test_ensure_chromium_installs_with_apt_get_only_when_missing(tmp_path, monkeypatch):
    """With no chromium, `ensure` runs apt-get update + install (a recording fake here) and finds the binary."""
    from controlplane.dashboard import browser

    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    fake_apt = bindir / "apt-get"
    fake_apt.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n'
                        f'if [ "$1" = install ]; then printf "#!/bin/sh\\n" > {bindir}/chromium; /bin/chmod +x {bindir}/chromium; fi\n')
    fake_apt.chmod(0o755)
    monkeypatch.delenv("CHROMIUM_BIN", raising=False)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(browser, "DEBIAN_CHROMIUM", tmp_path / "nowhere" / "chromium")
    monkeypatch.setattr(browser.os, "geteuid", lambda: 0)
    assert browser.ensure_chromium() == bindir / "chromium"
    assert calls.read_text().splitlines() == ["update", "install -y --no-install-recommends chromium"]
    # present now: nothing is installed again
    assert browser.ensure_chromium() == bindir / "chromium"
    assert len(calls.read_text().splitlines()) == 2
    monkeypatch.setenv("CHROMIUM_BIN", str(tmp_path / "nope"))
    with pytest.raises(browser.ToolchainError, match=r"CHROMIUM_BIN=.*/nope: no such file"):
        browser.ensure_chromium()


async def test_sign_in_codes_are_one_time_short_lived_and_bounded(monkeypatch):
    from litestar.exceptions import NotAuthorizedException

    from controlplane.auth.tokens import Token
    from controlplane.dashboard import auth

    admin = Token(name="admin", scopes=frozenset({"admin"}), secret=ADMIN_TOKEN)
    codes = auth.SignInCodes()
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    first, second = await codes.issue(admin), await codes.issue(admin)
    assert ADMIN_TOKEN not in first and first != second
    assert await codes.redeem(first) is admin
    with pytest.raises(NotAuthorizedException, match="already used or expired"):
        await codes.redeem(first)
    now[0] += auth.SignInCodes.TTL_S
    with pytest.raises(NotAuthorizedException, match="already used or expired"):
        await codes.redeem(second)
    many = [await codes.issue(admin) for _ in range(auth.SignInCodes.MAX_PENDING + 5)]
    assert len(codes._pending) == auth.SignInCodes.MAX_PENDING
    assert await codes.redeem(many[-1]) is admin
    with pytest.raises(NotAuthorizedException):
        await codes.redeem(many[0])  # the oldest made way


async def test_a_code_issued_by_one_process_is_redeemed_once_by_any(nats_server, monkeypatch):
    """Processes of one deployment share the codes through JetStream KV: a link printed by one
    process opens on another (the kernel hands the connection to either), once, and not after
    it expired."""
    import asyncio

    import nats
    from litestar.exceptions import NotAuthorizedException

    from controlplane.auth.tokens import TokenSet, parse_tokens
    from controlplane.dashboard import auth
    from controlplane.infra.recordkeys import RecordKeys

    tokens = TokenSet(parse_tokens(f"admin={ADMIN_TOKEN}:admin", "test"), "test")
    admin = tokens.by_name("admin")
    assert admin is not None
    nc = await nats.connect(nats_server.extra["url"])
    try:
        await auth.ensure_shared_codes(nc.jetstream())
        keys = RecordKeys.generate()  # the replicas of one deployment share one record key
        one, two = (auth.SignInCodes(auth.shared_codes(lambda: nc), lambda: tokens, keys) for _ in range(2))
        code = await one.issue(admin)
        assert (await two.redeem(code)).secret == ADMIN_TOKEN
        with pytest.raises(NotAuthorizedException, match="already used"):
            await one.redeem(code)
        # two processes redeeming one code at once: exactly one of them signs in
        code = await one.issue(admin)
        outcomes = await asyncio.gather(one.redeem(code), two.redeem(code), return_exceptions=True)
        assert sorted(type(o).__name__ for o in outcomes) == ["NotAuthorizedException", "Token"], outcomes
        code = await two.issue(admin)
        later = auth.time.time() + auth.SignInCodes.TTL_S + 1
        monkeypatch.setattr(auth.time, "time", lambda: later)
        with pytest.raises(NotAuthorizedException):
            await one.redeem(code)
    finally:
        await nc.close()


async def test_a_planted_shared_code_does_not_sign_in(nats_server, caplog):
    """Anyone holding a control-plane NATS credential can write the codes bucket: an entry that
    the deployment's record key did not sign (unsigned, signed by another key, or a genuine
    signature moved to another digest) is refused like an unknown code, with a log line; a genuine
    code still opens once on the other control plane."""
    import hashlib
    import time

    import msgspec
    import nats
    from litestar.exceptions import NotAuthorizedException

    from controlplane.auth.tokens import TokenSet, parse_tokens
    from controlplane.dashboard import auth
    from controlplane.infra.recordkeys import RecordKeys

    tokens = TokenSet(parse_tokens(f"admin={ADMIN_TOKEN}:admin", "test"), "test")
    admin = tokens.by_name("admin")
    assert admin is not None
    keys, intruder = RecordKeys.generate(), RecordKeys.generate()
    nc = await nats.connect(nats_server.extra["url"])
    try:
        await auth.ensure_shared_codes(nc.jetstream())
        kv = await nc.jetstream().key_value(auth.SHARED_BUCKET)
        one, two = (auth.SignInCodes(auth.shared_codes(lambda: nc), lambda: tokens, keys) for _ in range(2))

        async def plant(code: str, entry: dict) -> None:
            await kv.put(hashlib.sha256(code.encode()).hexdigest(), msgspec.json.encode(entry))

        def signed_by(signer: RecordKeys, digest: str) -> dict:
            body = {"digest": digest, "token": "admin", "expires": time.time() + 60}
            return {**body, "kid": signer.kid, "sig": signer.sign(auth.SIGNIN_DOMAIN, body)}

        await plant("unsigned", {"token": "admin", "expires": time.time() + 60})
        digest = hashlib.sha256(b"other-key").hexdigest()
        await plant("other-key", signed_by(intruder, digest))
        stolen = signed_by(keys, hashlib.sha256(b"genuine-elsewhere").hexdigest())  # a real signature, another digest
        await plant("moved", stolen)
        with caplog.at_level("WARNING", logger=auth.__name__):
            for code in ("unsigned", "other-key", "moved"):
                with pytest.raises(NotAuthorizedException, match="already used or expired"):
                    await two.redeem(code)
        refusals = [r.getMessage() for r in caplog.records if "refused a shared code" in r.getMessage()]
        assert [m.rsplit(": ", 1)[1].split(" (")[0] for m in refusals] == ["unsigned", "unknown key", "forged"]
        code = await one.issue(admin)
        assert (await two.redeem(code)).secret == ADMIN_TOKEN
        with pytest.raises(NotAuthorizedException, match="already used"):
            await one.redeem(code)
    finally:
        await nc.close()
