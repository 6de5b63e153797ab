"""What every route needs, built once per API process in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from berth.api.delivery.followers import StreamFollowers
from berth.api.delivery.relay import TokenRelay
from berth.api.directory import WorkerDirectory
from berth.api.intake.auth import KeyRing
from berth.api.intake.ingress import Ingress
from berth.api.settings import ApiSettings
from berth.limits import Quotas
from berth.store.adapters import AdapterStore
from berth.store.batches import BatchStore
from berth.store.catalog import Catalog
from berth.store.files import FileStore
from berth.store.jobs import JobStore


@dataclass
class ApiState:
    """The long-lived clients and stores of one API process."""

    settings: ApiSettings
    redis: Redis
    relay: TokenRelay
    directory: WorkerDirectory
    ingress: Ingress
    # per-tenant limits (the ingress admits requests through the same object)
    quotas: Quotas
    # API keys -> tenants, and the admin keys (empty: see deps.admin)
    keys: KeyRing
    admin_keys: KeyRing
    jobs: JobStore
    files: FileStore
    batches: BatchStore
    adapters: AdapterStore
    # the declared models (the admin API changes them)
    catalog: Catalog
    # one shared reader for every follower of a stream (job events)
    followers: StreamFollowers
    # this process's id in the API registry (api/presence.py): queued requests' origin
    instance: str = ""
