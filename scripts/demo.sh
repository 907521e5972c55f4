#!/usr/bin/env bash
# The end-to-end story, told through the Envoy gateway with curl and straight to the
# services with grpcurl. `make demo` starts the mesh first and leaves it running.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
gw="http://127.0.0.1:8080"
grpcurl=".venv/bin/grpcurl"
# grpcurl presents the operator's certificate (mTLS); plaintext only under INTERPAY_PLAINTEXT=1.
certs=".data/dev/certs"
if [ "${INTERPAY_PLAINTEXT:-}" = "1" ]; then tls="-plaintext"
else tls="-cacert $certs/ca.pem -cert $certs/operator.pem -key $certs/operator-key.pem"; fi
# Through the gateway every call but registration and login needs a credential: a user's
# token, a merchant's API key, or (for what only operators do: funding, transfers for now)
# an operator's token, minted with the mesh's own key (scripts/operator_token.py).
op="authorization: Bearer $(.venv/bin/python scripts/operator_token.py --profile dev)"
json() { .venv/bin/python -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '   $ %s\n' "$*"; }
uuid() { .venv/bin/python -c 'import uuid; print(uuid.uuid4())'; }
tag=$(uuid | cut -c1-8)

say "1. Ada and Ben register (HTTP through Envoy)"
show "curl -X POST $gw/v1/users -d '{\"email\": \"ada.$tag@example.com\", ...}'"
ada=$(curl -sf -X POST "$gw/v1/users" -d "{\"email\":\"ada.$tag@example.com\",\"phone\":\"+4915$(printf '%09d' $((16#$tag % 1000000000)))\",\"password\":\"correct horse battery staple\",\"displayName\":\"Ada\",\"countryCode\":\"DE\"}" | json "d['user']['userId']")
ben=$(curl -sf -X POST "$gw/v1/users" -d "{\"email\":\"ben.$tag@example.com\",\"phone\":\"+4916$(printf '%09d' $((16#$tag % 1000000000)))\",\"password\":\"another long passphrase\",\"displayName\":\"Ben\",\"countryCode\":\"DE\"}" | json "d['user']['userId']")
echo "   Ada is user $ada, Ben is user $ben"

say "2. Both log in and get a signed JWT (ES256, verifiable with the JWKS)"
show "curl -X POST $gw/v1/auth:login -d '{\"email\": \"ada.$tag@example.com\", \"password\": \"...\"}'"
token=$(curl -sf -X POST "$gw/v1/auth:login" -d "{\"email\":\"ada.$tag@example.com\",\"password\":\"correct horse battery staple\"}" | json "d['accessToken']")
ben_token=$(curl -sf -X POST "$gw/v1/auth:login" -d "{\"email\":\"ben.$tag@example.com\",\"password\":\"another long passphrase\"}" | json "d['accessToken']")
echo "   Ada's access token: ${token:0:40}..."
echo "   signing key id: $(curl -sf "$gw/.well-known/jwks.json" | json "d['keys'][0]['kid']")"

say "3. Each opens a EUR wallet, with their own token"
show "curl -X POST $gw/v1/wallets -H 'authorization: Bearer <Ada's token>' -d '{\"ownerType\": \"OWNER_TYPE_USER\", \"ownerId\": \"$ada\", \"currency\": \"EUR\"}'"
wa=$(curl -sf -X POST "$gw/v1/wallets" -H "authorization: Bearer $token" -d "{\"ownerType\":\"OWNER_TYPE_USER\",\"ownerId\":\"$ada\",\"currency\":\"EUR\"}" | json "d['wallet']['walletId']")
wb=$(curl -sf -X POST "$gw/v1/wallets" -H "authorization: Bearer $ben_token" -d "{\"ownerType\":\"OWNER_TYPE_USER\",\"ownerId\":\"$ben\",\"currency\":\"EUR\"}" | json "d['wallet']['walletId']")
echo "   Ada's wallet $wa, Ben's wallet $wb"

say "4. An operator funds Ada's wallet with EUR 100.00 from the system funding account"
show "curl -X POST $gw/v1/wallets/$wa:fund -H 'authorization: Bearer <operator token>' -d '{\"amount\": {\"amountMinor\": \"10000\", \"currency\": \"EUR\"}, \"reference\": \"bank-deposit-$tag\"}'"
curl -sf -X POST "$gw/v1/wallets/$wa:fund" -H "$op" -d "{\"amount\":{\"amountMinor\":\"10000\",\"currency\":\"EUR\"},\"reference\":\"bank-deposit-$tag\"}" | json "'   available: ' + d['wallet']['available']['amountMinor'] + ' ' + d['wallet']['available']['currency'] + ' minor units'"

say "5. Ada pays Ben EUR 25.50 (transfers service -> wallet ledger, over gRPC inside the mesh)"
tid=$(uuid)
show "curl -X POST $gw/v1/transfers -d '{\"transferId\": \"$tid\", \"amount\": {\"amountMinor\": \"2550\", ...}}'"
body="{\"transferId\":\"$tid\",\"sourceWalletId\":\"$wa\",\"destinationWalletId\":\"$wb\",\"amount\":{\"amountMinor\":\"2550\",\"currency\":\"EUR\"},\"description\":\"dinner\"}"
curl -sf -X POST "$gw/v1/transfers" -H "$op" -d "$body" | json "'   transfer ' + d['transfer']['transferId'] + ': ' + d['transfer']['state']"
echo "   the same request again (a client retry) returns the same transfer and moves nothing:"
curl -sf -X POST "$gw/v1/transfers" -H "$op" -d "$body" | json "'   transfer ' + d['transfer']['transferId'] + ': ' + d['transfer']['state']"

say "6. Ada tries to send more than she has: refused with a precise reason, nothing moves"
code=$(curl -s -o /tmp/interpay-demo.json -w '%{http_code}' -X POST "$gw/v1/transfers" -H "$op" -d "{\"transferId\":\"$(uuid)\",\"sourceWalletId\":\"$wa\",\"destinationWalletId\":\"$wb\",\"amount\":{\"amountMinor\":\"999999\",\"currency\":\"EUR\"}}")
echo "   HTTP $code: $(json "d['details'][0]['reason'] + ' - ' + d['message']" < /tmp/interpay-demo.json)"

say "7. Bad input names the field (HTTP 400 with google.rpc.BadRequest)"
code=$(curl -s -o /tmp/interpay-demo.json -w '%{http_code}' -X POST "$gw/v1/wallets/$wa:fund" -H "$op" -d '{"amount":{"amountMinor":"-5","currency":"EUR"}}')
echo "   HTTP $code: $(json "', '.join(v['field'] + ' ' + v['description'] for v in d['details'][1]['fieldViolations'])" < /tmp/interpay-demo.json)"

say "8. Ada's history, newest first (grpcurl straight to the wallet service, via reflection)"
show "$grpcurl $tls -d '{\"wallet_id\": \"$wa\"}' 127.0.0.1:50052 interpay.wallet.v1.WalletService/ListWalletTransactions"
"$grpcurl" $tls -d "{\"wallet_id\":\"$wa\"}" 127.0.0.1:50052 interpay.wallet.v1.WalletService/ListWalletTransactions \
  | json "'\n'.join('   %s %8s %s  balance after %s' % (t['kind'].removeprefix('TRANSACTION_KIND_'), t['amount']['amount_minor'], t['amount']['currency'], t['balance_after']['amount_minor']) for t in d['transactions'])"
echo "   Ben's balance, read with his token: $(curl -sf -H "authorization: Bearer $ben_token" "$gw/v1/wallets/$wb" | json "d['wallet']['balance']['amountMinor'] + ' ' + d['wallet']['balance']['currency']")"

say "9. Every call needs a credential, and a user sees only their own wallets"
code=$(curl -s -o /tmp/interpay-demo.json -w '%{http_code}' "$gw/v1/wallets/$wb")
echo "   no credential, GET /v1/wallets/<Ben's>: HTTP $code $(json "d['details'][0]['reason']" < /tmp/interpay-demo.json)"
code=$(curl -s -o /tmp/interpay-demo.json -w '%{http_code}' -H "authorization: Bearer $token" "$gw/v1/wallets/$wb")
echo "   Ada's token, GET /v1/wallets/<Ben's>: HTTP $code $(json "d['details'][0]['reason']" < /tmp/interpay-demo.json) (as if it did not exist)"

say "10. What is still to come says so (payments, payouts, fraud arrive with their issues)"
code=$(curl -s -o /tmp/interpay-demo.json -w '%{http_code}' -H "$op" "$gw/v1/payments/$(uuid)")
echo "   GET /v1/payments/...: HTTP $code $(json "d['message']" < /tmp/interpay-demo.json)"

cat <<EOF2

The mesh is still running. Try next:
  token=\$(.venv/bin/python scripts/operator_token.py --profile dev)   # an operator's JWT, 1 h
  curl -H "authorization: Bearer \$token" $gw/v1/wallets/$wa
  curl -H "authorization: Bearer \$token" "$gw/v1/wallets/$wa/transactions?pageSize=1"
  $grpcurl $tls 127.0.0.1:50052 list
  $grpcurl $tls 127.0.0.1:50052 describe interpay.wallet.v1.WalletService
  make status      # processes, ports, health
  make logs        # the last lines of every process's log (.data/dev/logs/)
  make down        # stop everything
EOF2
