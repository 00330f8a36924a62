"""Shared types and helpers that every stage may import (and nothing else)."""
from xaudit.core.errors import ConfigError, NotApplicable, UnknownName, XauditError
from xaudit.core.registry import Registry

__all__ = ["ConfigError", "NotApplicable", "Registry", "UnknownName", "XauditError"]
