"""``python -m kasmina`` runs the CLI."""

from kasmina.cli import main

main()
