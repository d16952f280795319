from tests.store.fixtures import annotators, db_url, store  # noqa: F401
