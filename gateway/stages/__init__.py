"""The tenant stages of the gateway's request path (see gateway.fleet.exchange.Stage), in order:
tenancy (who, may it, now; then the ledger row) and prompt security."""
