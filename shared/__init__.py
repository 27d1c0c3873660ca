"""The project's common package: event contracts, NATS bus, database, config, auth, money.

It never imports a service (enforced by import-linter, see pyproject.toml).
"""
