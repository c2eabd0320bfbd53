from haul.cli import main

main()
