"""storerec: a recommendation engine service for online stores.

This package holds what every stage shares: settings, the command line and progress output.
The stages themselves are the top-level packages ``features``, ``models``, ``training``,
``evaluation`` and ``serving``.
"""

__version__ = "0.1.0"
