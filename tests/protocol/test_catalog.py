"""The model catalog's entries: what a catalog document may hold, and what a wrong one is told."""

from __future__ import annotations

import pytest

from berth.protocol.catalog import CatalogAdapter, CatalogError, parse_catalog


def test_models_with_adapters_by_name_or_with_a_path() -> None:
    models = parse_catalog(
        {
            "models": [
                {
                    "name": "Qwen/Qwen2.5-7B-Instruct",
                    "adapters": ["sql", {"name": "chat", "path": "/a/chat"}],
                },
                {"name": "tiny"},
                "bare-name",
            ]
        }
    )
    assert [m.name for m in models] == ["Qwen/Qwen2.5-7B-Instruct", "tiny", "bare-name"]
    assert models[0].adapters == (
        CatalogAdapter(name="sql"),
        CatalogAdapter(name="chat", path="/a/chat"),
    )
    assert models[0].adapter_names() == {"sql", "chat"}
    assert models[1].adapters == ()


def test_an_empty_document_declares_nothing() -> None:
    assert parse_catalog(None) == []
    assert parse_catalog({"models": []}) == []


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ([{"name": "m"}], "expected a mapping with one key, 'models'"),
        ({"models": [], "extra": 1}, "expected a mapping with one key, 'models'"),
        ({"models": {"name": "m"}}, "'models' must be a list"),
        ({"models": [{"name": "has space"}]}, "models[0].name: a model name must be"),
        ({"models": [{"name": "m", "size": 3}]}, "models[0].size: Extra inputs"),
        ({"models": [{"name": "m", "adapters": ["bad/name"]}]}, "models[0].adapters.0.name"),
        (
            {"models": [{"name": "m", "adapters": [{"name": "a", "path": "rel/dir"}]}]},
            "an adapter path must be absolute",
        ),
        ({"models": ["m", {"name": "m"}]}, "models named more than once: m"),
        (
            {"models": [{"name": "m", "adapters": ["a"]}, {"name": "n", "adapters": ["a"]}]},
            "adapter 'a' of 'n' is also an adapter of 'm'",
        ),
        ({"models": [{"name": "m", "adapters": ["n"]}, "n"]}, "adapter 'n' of 'm' is also a model"),
    ],
)
def test_a_wrong_document_is_told_where_and_what_is_allowed(document: object, says: str) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(document, "models.yaml")
    assert str(caught.value).startswith("models.yaml: ")
    assert says in str(caught.value)
