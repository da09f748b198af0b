"""Makes `pytest exercises/` run the lab's public cases: one test per case, on real rank processes."""

from grader.pytest_plugin import *  # noqa: F401,F403  (pytest finds hooks by name in a conftest)
