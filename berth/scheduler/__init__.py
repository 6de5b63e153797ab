"""berth scheduler."""
