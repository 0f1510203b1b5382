"""elusive: enhance elusive clues in knowledge learning by contrasting attention of LMs."""

__version__ = "0.1.0"
