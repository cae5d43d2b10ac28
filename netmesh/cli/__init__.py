"""The ``netmesh`` command line (argparse) and its status rendering."""
