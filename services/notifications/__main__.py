"""The notifications service. Its contract is served now; its behaviour arrives with issue
#7 (event backbone), and until then every RPC answers UNIMPLEMENTED saying so."""

from services.framework.server import run_contract_only

run_contract_only("notifications")
