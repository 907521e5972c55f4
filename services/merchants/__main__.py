from services.merchants.bootstrap import main

main()
