"""One module per `python -m grader` command: `configure(parser)` and `run(args) -> exit code`."""

from __future__ import annotations

INSTRUCTOR_INSTALL = 'pip install -e ".[instructor]"'


def needs_instructor_extra(command: str, missing: str | None) -> str:
    """The error of an instructor command whose optional dependency is not installed."""
    return (f"error: `python -m grader {command}` needs the instructor extra ({missing} is not installed); "
            f"in the kit's folder: {INSTRUCTOR_INSTALL}")
