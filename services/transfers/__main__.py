from services.transfers.bootstrap import main

main()
