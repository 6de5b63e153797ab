"""Job and batch webhooks: signed end events delivered from the outbox (store/webhooks.py)."""
