"""Grafana dashboards shipped with the package (compose/ provisions them from here)."""

__all__ = ()
