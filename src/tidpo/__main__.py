"""`python -m tidpo` runs the command line."""

from tidpo.cli import main

main()
