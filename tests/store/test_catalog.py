"""The model catalog against a real server: seeded, changed, read by every role, and its
adapters registered where workers and the API look adapters up."""

from __future__ import annotations

import redis.asyncio

from berth.protocol.catalog import CatalogAdapter, CatalogModel
from berth.store.adapters import AdapterStore
from berth.store.catalog import Catalog


async def test_a_seeded_catalog_is_read_back_whole(aredis: redis.asyncio.Redis) -> None:
    catalog = Catalog(aredis)
    tiny = CatalogModel(
        name="tiny",
        adapters=(CatalogAdapter(name="a1"), CatalogAdapter(name="a2", path="/adapters/a2")),
    )
    hf = CatalogModel(name="Qwen/Qwen2.5-7B-Instruct")
    await catalog.seed([tiny, hf])
    assert await catalog.read() == {"tiny": tiny, "Qwen/Qwen2.5-7B-Instruct": hf}
    assert await catalog.names() == {"tiny", "Qwen/Qwen2.5-7B-Instruct"}
    # the adapters are registered: by name, and with their directory where one is given
    records = await AdapterStore(aredis).records()
    assert records["a1"] == {"model": "tiny"}
    assert records["a2"] == {"model": "tiny", "path": "/adapters/a2"}


async def test_a_second_seed_replaces_its_entries_and_keeps_the_others(
    aredis: redis.asyncio.Redis,
) -> None:
    catalog = Catalog(aredis)
    await catalog.seed([CatalogModel(name="m1", adapters=(CatalogAdapter(name="x"),))])
    await catalog.put(CatalogModel(name="m2"))
    await catalog.seed([CatalogModel(name="m1")])
    assert await catalog.read() == {"m1": CatalogModel(name="m1"), "m2": CatalogModel(name="m2")}


async def test_an_adapter_registered_with_a_path_keeps_it_when_declared_by_name(
    aredis: redis.asyncio.Redis,
) -> None:
    adapters = AdapterStore(aredis)
    await adapters.register("a1", "tiny", "/admin/path")
    await Catalog(aredis).put(CatalogModel(name="tiny", adapters=(CatalogAdapter(name="a1"),)))
    assert (await adapters.records())["a1"] == {"model": "tiny", "path": "/admin/path"}


async def test_removing_a_model(aredis: redis.asyncio.Redis) -> None:
    catalog = Catalog(aredis)
    await catalog.put(CatalogModel(name="m1"))
    assert await catalog.remove("m1")
    assert not await catalog.remove("m1")
    assert await catalog.read() == {}
