"""Fixtures for the API tests (helpers live in api_testutil.py)."""

from api_testutil import ar_server, dlm_server, keyed_server, model_dirs  # noqa: F401
