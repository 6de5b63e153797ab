"""Workers: the Celery app and task, the engine (the only place vLLM is imported), plumbing."""
