"""Pure cores: no sockets, clocks, processes, files or global randomness (see tests/core/test_purity.py)."""
