"""Clients of many workers: ``FleetClient`` routes by capacity and fails over, with no
control plane (docs/fleet.md)."""

from .client import FleetClient

__all__ = ["FleetClient"]
