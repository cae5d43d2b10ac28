"""netmesh benchmarks: `netmesh bench` suites and peer comparisons (source checkout only)."""
