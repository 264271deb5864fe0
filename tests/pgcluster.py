"""The PostgreSQL server the tests use: the one ``WATTFARE_TEST_DATABASE_URL`` names, or
a throwaway cluster (:mod:`bench.pgserver`) for the run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from bench.pgserver import TEST_SETTINGS, URL_ENV, throwaway_cluster


@contextlib.contextmanager
def database_url_for_tests() -> Iterator[str]:
    given = os.environ.get(URL_ENV)
    if given:
        yield given
        return
    with throwaway_cluster(settings=TEST_SETTINGS) as cluster:
        yield cluster.url
