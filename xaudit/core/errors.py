"""Error types. Every error a user can trigger says what was wrong and how to fix it."""
from __future__ import annotations


class XauditError(Exception):
    """Base class of every error xaudit raises on purpose."""


class ConfigError(XauditError, ValueError):
    """A parameter, spec field or preset field has an invalid value.

    ``field`` names the offending parameter; the message states the allowed values.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class StoreError(XauditError):
    """A run directory's ``results.sqlite`` cannot be used: truncated, corrupt, not an SQLite file,
    or an SQLite file that is not an xaudit results store. The file is left as it was.

    ``path`` is the file, ``reason`` what is wrong with it.
    """

    def __init__(self, path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path} is not a readable xaudit results store ({reason}): move it away, or "
                         "write a new run directory with `xaudit run --out DIR`; nothing was changed")


class UnknownName(XauditError, KeyError):
    """A registry look-up used a name that is not registered."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return self.args[0]


class NotApplicable(XauditError):
    """A method or check cannot run on this model (e.g. Grad-CAM without a conv layer).

    The runner records it as 'not applicable', not as a failure.
    """


def check_range(field: str, value, lo, hi, *, lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ConfigError unless lo <= value <= hi (bounds open when asked)."""
    try:
        ok_lo = value > lo if lo_open else value >= lo
        ok_hi = value < hi if hi_open else value <= hi
    except TypeError:
        raise ConfigError(field, f"must be a number, got {value!r}") from None
    if not (ok_lo and ok_hi):
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ConfigError(field, f"must be in {left}{lo}, {hi}{right}, got {value!r}")


def check_int(field: str, value, lo: int, hi: int, extra: str = "") -> None:
    """Raise ConfigError unless value is an integer (not a bool) with lo <= value <= hi; ``extra``
    names other allowed values in the message (e.g. "or 'auto'")."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer in [{lo}, {hi}]{' ' + extra if extra else ''}, got {value!r}")
    check_range(field, value, lo, hi)


def check_bool(field: str, value) -> None:
    """Raise ConfigError unless value is a bool (YAML true / false)."""
    if not isinstance(value, bool):
        raise ConfigError(field, f"must be true or false, got {value!r}")


def check_choice(field: str, value, choices) -> None:
    """Raise ConfigError unless value is one of choices."""
    if value not in choices:
        raise ConfigError(field, f"must be one of {', '.join(map(repr, choices))}; got {value!r}")
