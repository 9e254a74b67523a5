"""Packaging beyond what pyproject.toml can say: the top-level migrations/ folder ships in
the wheel as the package ``relaybox_migrations`` (relaybox/store/migrate.py imports it).

pyproject.toml cannot combine package discovery with a package mapped from another
folder, so the package list is made here; everything else stays in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    # Namespace packages too (relaybox/store has no __init__.py), as pyproject's
    # packages.find did.
    packages=[*find_namespace_packages(include=["relaybox", "relaybox.*"],
                                       exclude=["*.__pycache__"]),
              "relaybox_migrations"],
    package_dir={"relaybox_migrations": "migrations"},
)
