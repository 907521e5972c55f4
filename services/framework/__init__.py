"""The shared service framework every InterPay service is built on.

One place for what all nine services do the same way: configuration from the
environment, the asyncio gRPC server with health and reflection, the interceptors
(validation, error mapping, logging, tracing), PostgreSQL pools and migrations, Redis,
and peer clients with deadlines and retries.
"""
