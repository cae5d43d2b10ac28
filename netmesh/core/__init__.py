"""Pure cores: no sockets, clocks, processes, files or global randomness.

Enforced by tests/core/test_purity.py.
"""
