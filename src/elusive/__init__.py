"""elusive: enhance elusive clues in knowledge learning by contrasting attention of LMs."""

from importlib.metadata import version

__version__ = version("elusive")
"""The installed package's version (pyproject.toml is its one source)."""
