from gptkit.cli import main

main()
