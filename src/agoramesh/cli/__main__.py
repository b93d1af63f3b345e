from agoramesh.cli.main import main

main()
