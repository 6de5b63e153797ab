"""A burst of one tenant's requests counted in one round trip.

Every request is counted against its tenant's requests per minute before its body is
read (``Quotas.count_request``). The requests of a tenant that reach this API process
while the count before them is still out wait for the next call, which counts them all:
``count_request.lua`` takes how many and admits the first ones that fit. A lone request
is counted at once, as it would be alone; a burst of a thousand (a client opening a
thousand connections at once) costs a few script calls instead of a thousand, and Redis,
which every role shares, sees a few commands instead of a queue of them.
"""

from __future__ import annotations

import asyncio

from berth.limits.model import Counts, TenantLimits
from berth.limits.store import QuotaStore

# what a batch's call gives each request in it: how many of the batch fit, the counts
# after counting those, and the time they were counted at
Counted = tuple[int, Counts, float]


class _Batch:
    """Requests of one tenant waiting for the same call."""

    __slots__ = ("now", "result", "size")

    def __init__(self, now: float) -> None:
        self.now = now
        self.size = 0
        self.result: asyncio.Future[Counted] = asyncio.get_running_loop().create_future()
        # every waiter may have left (cancelled) before the call failed: nobody to tell
        self.result.add_done_callback(_retrieved)


def _retrieved(result: asyncio.Future[Counted]) -> None:
    if not result.cancelled():
        result.exception()


class BurstCounter:
    """Counts requests per tenant, one call at a time per tenant, each call counting every
    request that arrived while the one before was out."""

    def __init__(self, store: QuotaStore) -> None:
        self._store = store
        # tenant -> the batch taking new requests (not sent yet)
        self._open: dict[str, _Batch] = {}
        # tenants with a call out
        self._out: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def count(
        self, limits: TenantLimits, tenant: str, now: float
    ) -> tuple[bool, Counts, float]:
        """Count one request: whether it fits, the counts after its batch was counted, and
        when that was (a batch is counted at the time its first request came)."""
        batch = self._open.get(tenant)
        if batch is None:
            batch = self._open[tenant] = _Batch(now)
            if tenant not in self._out:
                self._send(limits, tenant)
        place = batch.size
        batch.size += 1
        # shielded: a request whose client left must not cancel the others' call
        admitted, counts, counted_at = await asyncio.shield(batch.result)
        return place < admitted, counts, counted_at

    def _send(self, limits: TenantLimits, tenant: str) -> None:
        self._out.add(tenant)
        task = asyncio.get_running_loop().create_task(self._call(limits, tenant))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, limits: TenantLimits, tenant: str) -> None:
        # the batch closes when its call starts: requests from now on open the next one
        batch = self._open.pop(tenant)
        try:
            admitted, counts = await self._store.count_requests(
                limits, tenant, batch.now, batch.size
            )
        except asyncio.CancelledError:
            batch.result.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - every request of the batch raises it
            batch.result.set_exception(err)
        else:
            batch.result.set_result((admitted, counts, batch.now))
        finally:
            self._out.discard(tenant)
            if tenant in self._open:
                self._send(limits, tenant)
