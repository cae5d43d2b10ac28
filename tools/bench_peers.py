"""Peer comparison (Redis streams, the net-mesh wheel); see netmesh/bench_peers.py.

Same as ``netmesh bench peers ...``.
"""

import sys

from netmesh.bench_peers import main

if __name__ == "__main__":
    main(sys.argv[1:])
