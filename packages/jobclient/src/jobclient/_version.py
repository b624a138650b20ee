"""jobclient's version: one constant, kept equal to pyproject.toml's (a test checks).

A constant rather than `importlib.metadata.version()`, whose import alone costs jobctl tens of
milliseconds at every start.
"""

__version__ = "0.1.0"
