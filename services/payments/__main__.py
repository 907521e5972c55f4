"""The payments service. Its contract is served now; its behaviour arrives with issue
#4 (payments, transfers, card vault and the saga orchestrator);
until then every RPC answers UNIMPLEMENTED saying so."""

from services.framework.server import run_contract_only

run_contract_only("payments")
