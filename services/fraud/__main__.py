"""The fraud service. Its contract is served now; its behaviour arrives with issue
#6 (fraud detection), and until then every RPC answers UNIMPLEMENTED saying so."""

from services.framework.server import run_contract_only

run_contract_only("fraud")
