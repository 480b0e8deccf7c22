"""`GET /` (the dashboard), `/dashboard/login`, `/dashboard/logout`, `/dashboard/verify`.

The pages read what the app's dependencies hand them (`controlplane.app`); `audit_reader` is None
while the audit trail is not started, and the page says so instead of failing.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from litestar import Controller, Request, Response
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.params import Body, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from bridge.kernel.config import Settings
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.agents.status import StatusStore
from controlplane.audit.reader import TrailReader
from controlplane.audit.writer import TrailWriter
from controlplane.auth.guards import authenticate, requires
from controlplane.bundles.revisions import RevisionStore
from controlplane.dashboard import charts
from controlplane.dashboard.auth import COOKIE, SignInCodes, check_token, dashboard_access
from controlplane.dashboard.data import Sources, snapshot
from controlplane.evaluation.runtime import ModelClient
from controlplane.impact.service import ImpactService
from controlplane.impact.shadow import ShadowMode
from controlplane.infra.health import degraded
from controlplane.infra.nats import NatsConnection
from controlplane.infra.supervision import read_status
from controlplane.policies.service import PolicyService
from controlplane.routes import get, post

TEMPLATES = Path(__file__).with_name("templates")
IMPACT_STATES = ("allow", "review", "deny", "undefined", "none")
REFRESH_S = 10


def ago(t: float | None) -> str:
    if not t:
        return "never"
    s = max(0.0, time.time() - t)
    if s < 60:
        return f"{int(s)} s ago"
    if s < 3600:
        return f"{int(s // 60)} min ago"
    if s < 86400:
        return f"{int(s // 3600)} h ago"
    return f"{int(s // 86400)} d ago"


def clock(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "—"


def ms(v: float | None) -> str:
    if v is None:
        return "—"
    if v < 1:
        return f"{v * 1000:.0f} µs"
    if v < 1000:
        return f"{v:.3g} ms"
    return f"{v / 1000:.3g} s"


def _register(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters.update(ago=ago, clock=clock, ms=ms)
    engine.engine.globals.update(constitutional_hash=CONSTITUTIONAL_HASH)


def dashboard_templates() -> TemplateConfig:
    """The app's template configuration (the dashboard's templates live under `dashboard/`)."""
    return TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_register)


def _login_page(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    return Template(template_name="dashboard/login.html.j2", status_code=status,
                    context={"message": exc.detail, "status": status}, headers=exc.headers or {})


def _session_cookie(token: str) -> Cookie:
    return Cookie(key=COOKIE, value=token, path="/", httponly=True, samesite="lax", secure=False)


class DashboardController(Controller):
    path = "/"
    tags = ["dashboard"]
    include_in_schema = False
    exception_handlers = {NotAuthorizedException: _login_page, PermissionDeniedException: _login_page}

    @get("/", guards=[dashboard_access()], summary="The dashboard")
    async def index(self, settings: NamedDependency[Settings], revisions: NamedDependency[RevisionStore],
                    statuses: NamedDependency[StatusStore], policies: NamedDependency[PolicyService],
                    audit_reader: NamedDependency[TrailReader | None], nats: NamedDependency[NatsConnection],
                    model_client: NamedDependency[ModelClient], startup_errors: NamedDependency[list[str]],
                    errors: NamedDependency[list[str]], shadows: NamedDependency[ShadowMode],
                    audit_writer: NamedDependency[TrailWriter | None]) -> Template:
        snap = await snapshot(Sources(settings=settings, revisions=revisions, statuses=statuses, policies=policies,
                                      audit_reader=audit_reader, nats=nats, model_client=model_client,
                                      startup_errors=startup_errors, errors=errors))
        supervisor = read_status(settings.state_dir)
        cache = snap.cache
        context: dict[str, Any] = {
            "snap": snap,
            "refresh_s": REFRESH_S,
            "decisions_svg": charts.decisions_chart(snap.buckets, snap.bucket_s),
            "latency_svg": charts.latency_chart(snap.latency),
            "cache_svg": charts.ratio_bar([("L0 hits", cache["l0_hits"], "#1f7a4a"), ("L1 hits", cache["l1_hits"], "#2f9e62"),
                                           ("L2 hits", cache["l2_hits"], "#7cc49b"),
                                           ("misses", cache["misses"], "#d0d4da")], chart_id="cache-chart"),
            "outcomes_svg": charts.ratio_bar([(o, snap.outcome_totals.get(o, 0), charts.COLORS[o]) for o in charts.OUTCOMES],
                                             chart_id="outcomes-chart"),
            "colors": charts.COLORS,
            "outcomes": charts.OUTCOMES,
            "groq_key_here": settings.groq_api_key_set,
            "settings": settings,
            "health": "degraded" if degraded(errors, nats.connected, audit_writer.backlog_wait_s() if audit_writer else 0.0,
                                             supervisor) else "ok",  # as /health says
            "supervisor": supervisor,  # `groqpolicy up`'s view of its processes (None when it does not run us)
            "shadows": {str(s.rule_id): s for s in shadows.summaries()},  # by live policy: its shadow's divergence
        }
        return Template(template_name="dashboard/index.html.j2", context=context)

    @get("/dashboard/impact", guards=[dashboard_access()], summary="Impact reports and shadows")
    async def impact(self, impact: NamedDependency[ImpactService], shadows: NamedDependency[ShadowMode],
                     policies: NamedDependency[PolicyService]) -> Template:
        reports = list(reversed(impact.reports))
        matrices = []
        for report in reports[:1]:  # the newest report in full; the others as one line each
            for kind in sorted(report.matrix, key=lambda k: (k != "*", k)):
                rows = report.matrix[kind]
                states = [s for s in IMPACT_STATES if s in rows or any(s in r for r in rows.values())]
                bars = {before: charts.ratio_bar([(after, rows[before].get(after, 0), charts.COLORS.get(after, "#8a8f98"))
                                                  for after in states], chart_id=f"impact-{kind}-{before}")
                        for before in rows}
                matrices.append({"kind": kind, "rows": rows, "states": states, "bars": bars})
        divergence = {str(s.rule_id): charts.ratio_bar([("same", s.compared - s.diverged, charts.COLORS["allow"]),
                                                        ("diverged", s.diverged, charts.COLORS["deny"])],
                                                       chart_id=f"shadow-{s.rule_id}")
                      for s in shadows.summaries()}
        names = {str(r.rule_id): r.name for r in policies.store.records()}
        return Template(template_name="dashboard/impact.html.j2", context={
            "reports": reports, "matrices": matrices, "shadows": shadows.summaries(), "divergence": divergence,
            "names": names, "unrestored": dict(shadows.unrestored)})

    @get("/dashboard/verify", guards=[dashboard_access()], summary="Verify the whole audit chain")
    async def verify(self, audit_reader: NamedDependency[TrailReader | None]) -> Template:
        report, error = None, ""
        started = time.perf_counter()
        if audit_reader is None:
            error = "audit trail: not connected to NATS JetStream"
        else:
            try:
                report = await audit_reader.verify()
            except Exception as exc:  # noqa: BLE001 - the page reports why the chain could not be read
                error = str(exc)
        return Template(template_name="dashboard/verify.html.j2",
                        context={"report": report, "error": error, "took_ms": (time.perf_counter() - started) * 1000})

    @get("/dashboard/login", opt={"public": True}, summary="Sign in (a form, or ?code= from a printed link)")
    async def login_form(self, signin_codes: NamedDependency[SignInCodes],
                         code: Annotated[str | None, QueryParameter(description="a one-time sign-in code")] = None,
                         ) -> Response:
        if code:
            token = await signin_codes.redeem(code)
            return Redirect("/", status_code=303, cookies=[_session_cookie(token.secret)])
        return Template(template_name="dashboard/login.html.j2", context={"message": "", "status": 200})

    @post("/dashboard/login", opt={"public": True}, status_code=303, summary="Sign in with a token (form post)")
    async def login(self, request: Request,
                    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]) -> Response:
        token = (data.get("token") or "").strip()
        check_token(request, token)
        return Redirect("/", status_code=303, cookies=[_session_cookie(token)])

    @post("/dashboard/codes", guards=[requires("admin")], status_code=201, include_in_schema=True,
          summary="A one-time, short-lived sign-in link for the dashboard (what `groqpolicy dashboard` prints)")
    async def sign_in_code(self, request: Request, settings: NamedDependency[Settings],
                           signin_codes: NamedDependency[SignInCodes]) -> dict:
        token = authenticate(request)
        code = await signin_codes.issue(token)
        return {"url": f"{settings.base_url}/dashboard/login?code={code}", "expires_in_s": int(SignInCodes.TTL_S)}

    @post("/dashboard/logout", opt={"public": True}, status_code=303, summary="Forget the dashboard cookie")
    async def logout(self) -> Response:
        return Redirect("/dashboard/login", status_code=303,
                        cookies=[Cookie(key=COOKIE, value="", path="/", max_age=0, httponly=True, samesite="lax")])
