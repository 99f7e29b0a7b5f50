"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import difflib


class BenchError(Exception):
    """An error caused by the user's input (bad suite, unknown name, bad value, missing data)."""


def suggest(name: str, choices) -> str:
    """A ' (did you mean X?)' suffix for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def quiet_known_warnings() -> None:
    """Library warnings that are expected in a benchmark and would drown the per-cell lines."""
    import warnings

    warnings.filterwarnings("ignore", message="Secure RNG turned off")  # documented: secure_mode off
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus hooks on layer 1
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
