"""``python -P -m netmesh.cli``: the same as the ``netmesh`` console script."""

import sys

from netmesh.cli.main import main

sys.exit(main())
