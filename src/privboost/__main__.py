"""``python -m privboost`` runs the command line."""

from privboost.cli import main

main()
