"""End-to-end workflows built from the library: the demo (and later batch and reports)."""
