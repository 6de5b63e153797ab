"""berth api."""
