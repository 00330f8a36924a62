"""Checks: one module per protocol, each registered in CHECKS (see base.py for the contract)."""
from xaudit.checks.base import CHECKS, Check, CheckContext, ModelRef, describe, get, names, row
from xaudit.checks import randomization, data_randomization, random_logit  # noqa: F401,E402  (sanity checks)

__all__ = ["CHECKS", "Check", "CheckContext", "ModelRef", "describe", "get", "names", "row"]
