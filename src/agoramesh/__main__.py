"""``python -m agoramesh``: the CLI."""

from agoramesh.cli.main import main

main()
