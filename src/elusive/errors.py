"""The base class of every error a user can cause, and how error messages name an option.

Each module raises its own subclass (CorpusError, ConfigError, ...); the CLI catches this base
and prints the message as one ``error:`` line. A config's ``validate(name)`` names an option
with ``name(field)``: by default its command-line flag (``--batch-size``), and, when the check
runs for a run config, its config key (``train.batch_size:``), so the one set of checks serves
both.
"""

from __future__ import annotations


class ElusiveError(ValueError):
    """A user mistake: a bad option, input file, model spec or config; the message says which."""


def flag(field: str) -> str:
    """The command-line flag of option `field`: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")
