"""Alembic environment for the workspace database.

tether runs migrations itself (`tether.data.store.upgrade`), passing an open connection in
`config.attributes["connection"]`; `render_as_batch` lets later migrations alter SQLite tables.
"""

from alembic import context
from sqlalchemy import create_engine

from tether.data.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # plain `alembic` command line use, with sqlalchemy.url set
        with create_engine(config.get_main_option("sqlalchemy.url")).connect() as conn:
            _run(conn)
    else:
        _run(connection)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
