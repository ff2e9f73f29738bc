"""``python -m gpujobs``: the command line."""

from gpujobs.cli import main

main()
