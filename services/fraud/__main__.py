from services.fraud.bootstrap import main

main()
