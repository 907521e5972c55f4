"""InterPay's benchmark harness (`make bench`): ledger transfer RPC throughput against a
`pgbench -b tpcb-like` baseline on the same PostgreSQL, the hot-account case, and the
Envoy transcoding overhead. See bench/README.md; the entry point is `python -m bench.run`."""
