"""One base for every failure a user can fix: a stage or CLI command prints its message as one line and
exits non-zero, with no traceback (character.stage.run, character.cli). Anything else is a bug and keeps
its traceback.

Messages name the file (or param), the field, the value and the fix, e.g.
`params.yaml: dpo.beta: must be > 0 (got -0.1)`.
"""

from __future__ import annotations


class CharacterError(Exception):
    """An expected failure with a message written for the user."""


class ParamsError(CharacterError, ValueError):
    """params.yaml (or a preset, or a -S override) does not validate."""


class ConstitutionError(CharacterError, ValueError):
    """A constitution file that cannot be used; the message names file, trait and field."""


class DataError(CharacterError, ValueError):
    """An input file or a stage's data that cannot be used (bad JSON line, too few usable rows)."""


class BackendUnavailable(CharacterError, RuntimeError):
    """A registry entry names a backend or model this machine cannot run, or a role needs more than it offers."""


class ModelNotFound(CharacterError, RuntimeError):
    """Weights for a model alias cannot be found (a missing wheel, folder or hub id)."""


class BenchmarkDataMissing(CharacterError, FileNotFoundError):
    """The offline benchmark data is not installed."""
