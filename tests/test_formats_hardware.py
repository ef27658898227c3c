"""The formats x hardware table: every cell has a known status and a source that exists."""

from ptqlib.formats.hardware import FORMAT_COLUMNS, SOURCES, STATUSES, TABLE, markdown_table


def test_every_cell_has_a_status_and_a_cited_source():
    for platform in TABLE:
        assert tuple(platform.support) == FORMAT_COLUMNS, platform.name
        for status, source in platform.support.values():
            assert status in STATUSES and source in SOURCES, (platform.name, status, source)
    cited = {source for platform in TABLE for _, source in platform.support.values()}
    assert cited == set(SOURCES), f"sources nobody cites: {set(SOURCES) - cited}"


def test_the_markdown_lists_every_platform_and_source():
    text = markdown_table()
    assert all(platform.name in text for platform in TABLE)
    assert all(f"[{key}]" in text for key in SOURCES)
