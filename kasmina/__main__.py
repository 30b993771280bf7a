"""``python -m kasmina`` runs the CLI."""

from kasmina.cli import main

if __name__ == "__main__":  # a worker process (the benchmarks' producers) imports this module
    main()
