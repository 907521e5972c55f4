from services.vault.bootstrap import main

main()
