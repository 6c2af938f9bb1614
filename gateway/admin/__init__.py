"""The admin API: token, usage and audit operations over HTTP for operators' scripts."""

from __future__ import annotations

from gateway.admin.routes import ADMIN_TOKEN_ENV, add_admin_routes

__all__ = ["ADMIN_TOKEN_ENV", "add_admin_routes"]
