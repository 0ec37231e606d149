"""Rucio's listings are read from the HTTP response as they arrive, not after the whole body.

A scope of a million files is ~120 MB of JSON; the backfill's memory stays flat only
because rucio-clients sends its GET listings with ``stream=True`` and parses the JSON
stream line by line while ingestd writes each name to its state file. Checked against
the real Rucio server, so an upgrade of rucio-clients that changed it would show here:
the first name is available while the rest of the body is still unread.
"""

from __future__ import annotations

from typing import Any

import pytest

from ingestd.rucio_client import RucioCatalogue

from .support import RSE, SCOPE, BackfillBed, rubin_files

pytestmark = [pytest.mark.postgres]


def test_file_listing_reads_the_response_body_as_it_is_iterated(bed: BackfillBed) -> None:
    files = rubin_files(60, seed="stream")
    bed.rucio.add_files_with_metadata(RSE, files)
    settings = bed.settings()
    catalogue = RucioCatalogue(settings.rucio)
    session = catalogue.client.session
    responses: list[Any] = []
    get = session.get

    def recording(*args: Any, **kwargs: Any) -> Any:
        response = get(*args, **kwargs)
        responses.append(response)
        return response

    session.get = recording
    try:
        names = catalogue.file_names(SCOPE)
        first = next(names)
        listing = [r for r in responses if "/dids/search" in r.url]
        assert len(listing) == 1
        assert not listing[0]._content_consumed  # the rest is still on the socket
        rest = list(names)
        assert listing[0]._content_consumed
    finally:
        del session.get
        catalogue.close()
    assert sorted([first, *rest]) == sorted(f["name"] for f in files)
