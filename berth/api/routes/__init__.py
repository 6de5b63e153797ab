"""HTTP routes, one thin router per feature; the work is done by the services in ``berth.api``."""
