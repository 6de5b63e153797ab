"""The generated configuration reference matches the settings classes."""

from scripts.config_reference import PAGE, render


def test_configuration_reference_is_current() -> None:
    assert PAGE.read_text() == render(), "run: python -m scripts.config_reference"
