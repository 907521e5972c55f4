from services.payments.bootstrap import main

main()
