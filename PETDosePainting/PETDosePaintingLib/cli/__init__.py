"""The ``petdp`` command line: thin argument parsing over the library."""
