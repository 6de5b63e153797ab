"""berth: queue-based, OpenAI-compatible LLM serving."""

__version__ = "0.1.0"
