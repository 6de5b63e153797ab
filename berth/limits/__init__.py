"""Per-tenant limits, a concern that spans roles: what each limit is and the arithmetic of
the sliding-window rates (``model``), the counters in Redis and their Lua scripts
(``store``, ``lua/``), a burst's requests counted in one call (``counting``), the API's
admission (``quotas``) and its early refusal before routing (``early``). The API and the
scheduler import what they use from here; the limits import protocol, store and plumbing,
never a role.
"""

from __future__ import annotations

from berth.limits.early import ADMIN_PATHS, TENANT_PATHS, RefuseOverRate
from berth.limits.model import Counts, LimitBook, TenantLimits
from berth.limits.quotas import Quotas, QuotaSettings, limit_book
from berth.limits.store import Admission, QuotaStore, limit_scripts, release_queued

__all__ = [
    "ADMIN_PATHS",
    "TENANT_PATHS",
    "Admission",
    "Counts",
    "LimitBook",
    "QuotaSettings",
    "QuotaStore",
    "Quotas",
    "RefuseOverRate",
    "TenantLimits",
    "limit_book",
    "limit_scripts",
    "release_queued",
]
