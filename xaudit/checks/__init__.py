"""Checks: one module per protocol, each registered in CHECKS (see base.py for the contract)."""
from xaudit.checks.base import (CHECKS, METHOD_KINDS, Check, CheckContext, ModelRef, declared_models, describe, get,
                                 names, row, verdict_id, verdict_label)
from xaudit.checks import randomization, data_randomization, random_logit  # noqa: F401,E402  (sanity checks)
from xaudit.checks import contamination, localization, mislabeled, ood, ood_shift, spurious  # noqa: F401,E402  (debugging tests)
from xaudit.checks import trojan_localization, trojan_rediscovery  # noqa: F401,E402  (trojans)
from xaudit.checks import model_anomaly  # noqa: F401,E402  (model audits)

__all__ = ["CHECKS", "METHOD_KINDS", "Check", "CheckContext", "ModelRef", "declared_models", "describe", "get", "names", "row",
           "verdict_id", "verdict_label"]
