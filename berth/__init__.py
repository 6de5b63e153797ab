"""berth: queue-based, OpenAI-compatible LLM serving."""

from importlib.metadata import version

# pyproject.toml's version is the one source; the installed distribution carries it
__version__ = version("berth")
