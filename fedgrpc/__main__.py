"""``python -m fedgrpc`` runs the command line."""

from fedgrpc.cli import main

main()
