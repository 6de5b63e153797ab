"""Process plumbing every role shares: Redis connections, Celery configuration and
transport, settings base, supervised loops, logging context, tracing, the event loop and
the parent-death lifeline. It imports protocol/ only, never a role."""
