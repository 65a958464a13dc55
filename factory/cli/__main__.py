"""`python -m factory.cli ...` runs the command line (tests and benchmarks call it this way)."""

from factory.cli.edge import main

main()
