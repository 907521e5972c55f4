from services.wallet.bootstrap import main

main()
