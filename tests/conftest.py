"""The root conftest: loads the suite's plugin, where the shared fixtures live."""

pytest_plugins = ["tests.plugin"]
