"""Operator code: the ``harvester`` command, ``harvester up``, the embedded servers, migrations.

No tier imports it (tests/unit/test_layout.py); it imports ``shared`` and starts the tiers.
"""
