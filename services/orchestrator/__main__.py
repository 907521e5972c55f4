from services.orchestrator.bootstrap import main

main()
