"""One module per ``kasmina`` sub-command; each exposes ``register(subparsers)``."""
