"""Checks: one module per protocol, each registered in CHECKS (see base.py for the contract)."""
from xaudit.checks.base import CHECKS, Check, CheckContext, ModelRef, describe, get, names, row

__all__ = ["CHECKS", "Check", "CheckContext", "ModelRef", "describe", "get", "names", "row"]
