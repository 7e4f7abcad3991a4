"""``python -m custode``."""

from custode.cli import main

main()
