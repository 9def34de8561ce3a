"""The entry points: the ``qvl`` command, ``qvl up``'s supervisor, the benchmark drivers.

The top floor: the only code that imports both ``bots`` and ``worker``.
"""
