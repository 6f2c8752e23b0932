from segml.cli import main

main()
