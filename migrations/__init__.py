"""relaybox's peewee-migrate migrations, applied in name order by relaybox/store/migrate.py.

The folder is installed as the package ``relaybox_migrations`` (see setup.py), so that an
installed relaybox finds its migrations the same way as a source checkout does.
"""
