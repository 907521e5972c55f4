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
code=$(curl -s -o /tmp/interpay-demo.json -w '%{http_code}' -X POST "$gw/v1/transfers" -H "$op" -d "{\"transferId\":\"$(uuid)\",\"sourceWalletId\":\"$wa\",\"destinationWalletId\":\"$wb\",\"amount\":{\"amountMinor\":\"9999\",\"currency\":\"EUR\"}}")
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

say "10. An operator onboards a shop; it gets a settlement wallet and an API key (secret shown once)"
shop=$(curl -sf -X POST "$gw/v1/merchants" -H "$op" -d '{"legalName":"Corner Shop GmbH","displayName":"Corner Shop","contactEmail":"ops@corner.example","countryCode":"DE","settlementCurrency":"EUR","feeBps":290,"payoutAccount":{"holderName":"Corner Shop GmbH","iban":"DE89370400440532013000","countryCode":"DE"}}' | json "d['merchant']['merchantId']")
settlement=$(curl -sf -X POST "$gw/v1/merchants/$shop:activate" -H "$op" -d '{}' | json "d['merchant']['settlementWalletId']")
key=$(curl -sf -X POST "$gw/v1/merchants/$shop/apiKeys" -H "$op" -d '{"scopes":["API_KEY_SCOPE_PAYMENTS_READ","API_KEY_SCOPE_PAYMENTS_WRITE","API_KEY_SCOPE_REFUNDS_WRITE"]}' | json "d['apiKey']['publicId'] + '.' + d['secret']")
sk="authorization: ApiKey $key"
echo "   shop $shop, settlement wallet $settlement, API key ${key%%.*}.<secret>"

say "11. The shop charges Ada's wallet EUR 40.00, manual capture: fraud check, then a hold"
pay() { curl -s -o /tmp/interpay-demo.json -w '%{http_code}' -X POST "$gw/v1/payments" -H "$sk" -H "Idempotency-Key: $1" -d "$2"; }
show "curl -X POST $gw/v1/payments -H 'authorization: ApiKey <key>' -H 'Idempotency-Key: <uuid>' -d '{\"merchantId\": ..., \"payerWalletId\": ..., \"amount\": {\"amountMinor\": \"4000\", ...}, \"captureMethod\": \"CAPTURE_METHOD_MANUAL\"}'"
code=$(pay "$(uuid)" "{\"merchantId\":\"$shop\",\"payerWalletId\":\"$wa\",\"payerUserId\":\"$ada\",\"amount\":{\"amountMinor\":\"4000\",\"currency\":\"EUR\"},\"captureMethod\":\"CAPTURE_METHOD_MANUAL\",\"description\":\"order 1001\"}")
pid=$(json "d['payment']['paymentId']" < /tmp/interpay-demo.json)
echo "   HTTP $code: payment $pid is $(json "d['payment']['state'] + ', fraud ' + d['payment']['fraudAssessment']['decision'] + ' (score ' + str(d['payment']['fraudAssessment']['riskScore']) + ')'" < /tmp/interpay-demo.json)"
echo "   Ada's wallet: $(curl -sf -H "$op" "$gw/v1/wallets/$wa" | json "'available ' + d['wallet']['available']['amountMinor'] + ', held ' + d['wallet']['pending']['amountMinor']")"

say "12. The shop captures EUR 30.00 of it (the rest is released), then refunds EUR 10.00"
curl -sf -X POST "$gw/v1/payments/$pid:capture" -H "$sk" -d '{"amount":{"amountMinor":"3000","currency":"EUR"}}' | json "'   ' + d['payment']['state'] + ': captured ' + d['payment']['capturedAmount']['amountMinor'] + ', fee ' + d['payment']['feeAmount']['amountMinor']"
curl -sf -X POST "$gw/v1/payments/$pid/refunds" -H "$sk" -H "Idempotency-Key: $(uuid)" -d '{"amount":{"amountMinor":"1000","currency":"EUR"},"reason":"one item returned"}' | json "'   refund ' + d['refund']['refundId'] + ': ' + d['refund']['state']"
echo "   the payment's history: $(curl -sf -H "$sk" "$gw/v1/payments/$pid/transactions" | json "' -> '.join([d['transactions'][0]['fromState'].removeprefix('STATE_')] + [t['toState'].removeprefix('STATE_') for t in d['transactions']])")"
echo "   Ada's wallet: $(curl -sf -H "$op" "$gw/v1/wallets/$wa" | json "'available ' + d['wallet']['available']['amountMinor'] + ', held ' + d['wallet']['pending']['amountMinor']"); the shop's: $(curl -sf -H "$op" "$gw/v1/wallets/$settlement" | json "d['wallet']['balance']['amountMinor']")"

say "13. A card payment: the vault tokenises the card, the processor simulator authorises it"
card=$(curl -sf -X POST "$gw/v1/cards:tokenize" -H "$sk" -d '{"pan":"5555555555554444","expiryMonth":12,"expiryYear":2031,"cardholderName":"Ben Example"}')
ctoken=$(echo "$card" | json "d['card']['token']")
echo "   token $ctoken ($(echo "$card" | json "d['card']['brand'] + ' ending ' + d['card']['last4']"); the number itself stays in the vault)"
code=$(pay "$(uuid)" "{\"merchantId\":\"$shop\",\"cardToken\":\"$ctoken\",\"cvv\":\"123\",\"amount\":{\"amountMinor\":\"1999\",\"currency\":\"EUR\"}}")
echo "   HTTP $code: $(json "d['payment']['state'] + ', processor reference ' + d['payment']['processorReference']" < /tmp/interpay-demo.json)"
declined=$(curl -sf -X POST "$gw/v1/cards:tokenize" -H "$sk" -d '{"pan":"4000000000009995","expiryMonth":12,"expiryYear":2031}' | json "d['card']['token']")
code=$(pay "$(uuid)" "{\"merchantId\":\"$shop\",\"cardToken\":\"$declined\",\"cvv\":\"123\",\"amount\":{\"amountMinor\":\"1999\",\"currency\":\"EUR\"}}")
echo "   test card 4000 0000 0000 9995: HTTP $code $(json "d['details'][0]['reason'] + ' - ' + d['message']" < /tmp/interpay-demo.json)"

say "14. A fraudulent attempt: the payer is on the blacklist, so the fraud rules decline"
mallory=$(uuid)
curl -sf -X POST "$gw/v1/blacklist" -H "$op" -d "{\"entryType\":\"BLACKLIST_ENTRY_TYPE_USER\",\"value\":\"$mallory\",\"reason\":\"chargebacks on stolen cards\"}" >/dev/null
code=$(pay "$(uuid)" "{\"merchantId\":\"$shop\",\"payerWalletId\":\"$wa\",\"payerUserId\":\"$mallory\",\"amount\":{\"amountMinor\":\"500\",\"currency\":\"EUR\"}}")
fid=$(json "d['details'][0]['metadata']['payment_id']" < /tmp/interpay-demo.json)
echo "   HTTP $code $(json "d['details'][0]['reason']" < /tmp/interpay-demo.json); the shop reads why: $(curl -sf -H "$sk" "$gw/v1/payments/$fid" | json "d['payment']['fraudAssessment']['decision'] + ' - ' + '; '.join(d['payment']['fraudAssessment']['reasons'])")"

say "15. Ben pays EUR 20.00 out to his bank: hold, payout rail, capture to payout clearing"
code=$(curl -s -o /tmp/interpay-demo.json -w '%{http_code}' -X POST "$gw/v1/payouts" -H "$op" -d "{\"payoutId\":\"$(uuid)\",\"sourceWalletId\":\"$wb\",\"destination\":{\"holderName\":\"Ben Example\",\"iban\":\"DE89370400440532013000\",\"countryCode\":\"DE\"},\"amount\":{\"amountMinor\":\"2000\",\"currency\":\"EUR\"}}")
echo "   HTTP $code: payout $(json "d['payout']['payoutId'] + ' ' + d['payout']['state']" < /tmp/interpay-demo.json)"
echo "   Ben's balance now: $(curl -sf -H "authorization: Bearer $ben_token" "$gw/v1/wallets/$wb" | json "d['wallet']['balance']['amountMinor'] + ' ' + d['wallet']['balance']['currency']")"
told=""
for _ in $(seq 1 20); do  # the notification follows the payout's event through Kafka
  told=$(curl -sf -H "$op" "$gw/v1/users/$ben/notifications" \
    | json "next((n['title'] + ': ' + n['body'] for n in d.get('notifications', []) if n['template'].startswith('payout_')), '')" || true)
  [ -n "$told" ] && break
  sleep 0.5
done
echo "   Ben is told: ${told:-nothing yet (the notifications service is behind)}"

say "16. The ledger still balances: every wallet's entries sum to its balance"
curl -sf -X POST "$gw/v1/ledger:reconcile" -H "$op" -d '{}' | json "'   %s wallets, %s ledger transactions checked; mismatches: %s' % (d['walletsChecked'], d['transactionsChecked'], len(d.get('mismatchedWalletIds', [])) + len(d.get('unbalancedTransactionIds', [])))"

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
