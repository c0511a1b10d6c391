"""storerec: a recommendation engine service for online stores.

One package in floors (docs/architecture.md): ``cli`` > ``tools`` > ``serving`` | ``training`` >
``evaluation`` | ``registry`` | ``events`` > ``ranking`` > ``models`` > ``features`` > ``core``.
"""

__version__ = "0.1.0"
