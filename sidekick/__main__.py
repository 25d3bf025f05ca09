"""python -m sidekick."""

from sidekick.cli import main

main()
