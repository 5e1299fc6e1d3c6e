"""Subcommands of the `akfc` command line, one module each."""
