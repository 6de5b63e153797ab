"""The language berth's components speak: OpenAI models, envelopes, keys and errors."""
