"""Functions the example workflows call (SHOAL_CODE_PATH=examples/code under make dev)."""
