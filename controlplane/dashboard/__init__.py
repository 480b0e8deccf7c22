"""The dashboard at `/`: server-rendered Jinja2 pages with inline SVG charts (no build step, no JS framework)."""

from controlplane.dashboard.controllers import DashboardController, dashboard_templates

__all__ = ["DashboardController", "dashboard_templates"]
