"""The merchants service. Its contract is served now; its behaviour arrives with issue
#5 (identity, merchants and mesh security), and until then every RPC answers UNIMPLEMENTED saying so."""

from services.framework.server import run_contract_only

run_contract_only("merchants")
