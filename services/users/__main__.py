from services.users.bootstrap import main

main()
