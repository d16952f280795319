from tests.store.fixtures import db_url, store  # noqa: F401
