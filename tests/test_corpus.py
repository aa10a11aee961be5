"""Tests for lal.corpus: HTML cleaning, polite fetching from a local server, building a corpus."""

from __future__ import annotations


import pytest

import lal
from lal.corpus import (
    USER_AGENT,
    CorpusReport,
    DisallowedByRobots,
    PoliteFetcher,
    build_corpus,
    extract_main_text,
    fetch_pages,
)
from local_server import LocalServer

ARTICLE_PAGE = """<!DOCTYPE html>
<html><head><title>Page title</title><style>body { color: red; }</style>
<script>var tracking = "SCRIPT-IN-HEAD";</script></head>
<body>
  <header class="site"><a href="/">SITE-HEADER</a></header>
  <nav><ul><li>NAV-HOME</li><li>NAV-ABOUT</li></ul></nav>
  <div role="navigation">ROLE-NAVIGATION</div>
  <main>
    <article>
      <header><h1>The   Tempest</h1></header>
      <p>Full fathom five
         thy father lies;</p>
      <script>document.write("SCRIPT-IN-BODY")</script>
      <style>.x { margin: 0 }</style>
      <noscript>NOSCRIPT-TEXT</noscript>
      <p>Of his bones are coral made;<br>Those are pearls that were his eyes.</p>
      <!-- COMMENT-TEXT -->
      <pre>def sea_change():
    return "rich and strange"</pre>
      <ul><li>Ariel</li><li>Prospero &amp; Miranda</li></ul>
      <aside>ASIDE-RELATED</aside>
      <form>FORM-SEARCH <input name="q"></form>
    </article>
  </main>
  <div role="contentinfo">ROLE-CONTENTINFO</div>
  <footer>SITE-FOOTER</footer>
</body></html>"""

ARTICLE_TEXT = (
    "The Tempest\n\n"
    "Full fathom five thy father lies;\n\n"
    "Of his bones are coral made;\nThose are pearls that were his eyes.\n\n"
    'def sea_change():\n    return "rich and strange"\n\n'
    "Ariel\n\n"
    "Prospero & Miranda"
)

DROPPED = (
    "Page title", "SCRIPT-IN-HEAD", "SITE-HEADER", "NAV-HOME", "ROLE-NAVIGATION", "SCRIPT-IN-BODY",
    "margin", "NOSCRIPT-TEXT", "COMMENT-TEXT", "ASIDE-RELATED", "FORM-SEARCH", "ROLE-CONTENTINFO", "SITE-FOOTER",
)


# --------------------------------------------------------------------------- HTML to text


def test_extract_main_text_keeps_the_article_and_drops_the_furniture():
    text = extract_main_text(ARTICLE_PAGE)
    assert text == ARTICLE_TEXT
    for furniture in DROPPED:
        assert furniture not in text


def test_extract_main_text_falls_back_to_role_main_articles_then_body():
    role_main = '<body><div>OUTSIDE</div><div role="main"><p>inside</p></div></body>'
    assert extract_main_text(role_main) == "inside"
    articles = "<body><p>OUTSIDE</p><article><p>one</p></article><article><p>two</p></article></body>"
    assert extract_main_text(articles) == "one\n\ntwo"
    plain = "<body><header>BANNER</header><div>a<div>b</div> c</div><footer>FOOT</footer></body>"
    assert extract_main_text(plain) == "a\n\nb\n\nc"
    assert extract_main_text("just   some\n text &lt;3") == "just some text <3"


def test_extract_main_text_separates_table_cells():
    html = "<table><tr><th>word</th><th>count</th></tr><tr><td>thee</td><td>42</td></tr></table>"
    assert extract_main_text(html) == "word count\n\nthee 42"


# --------------------------------------------------------------------------- a local web server


def site_with(robots: tuple[int, str, bytes] | None = None) -> LocalServer:
    routes = {
        "/page.html": (200, "text/html; charset=utf-8", ARTICLE_PAGE.encode("utf-8")),
        "/private/secret.html": (200, "text/html", b"<p>SECRET</p>"),
        "/plain.txt": (200, "text/plain", "Caf\u00e9 ol\u00e9,\n  kept   as is.\n".encode("utf-8")),
        "/doc.pdf": (200, "application/pdf", b"%PDF-1.4"),
    }
    if robots is not None:
        routes["/robots.txt"] = robots
    return LocalServer(routes)


@pytest.fixture
def site():
    srv = site_with((200, "text/plain", b"User-agent: *\nDisallow: /private/\n"))
    yield srv
    srv.close()


class FakeTime:
    """A clock that moves only when slept on, so pauses are recorded instead of waited."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def fake_fetcher(time: FakeTime, delay_s: float = 1.0) -> PoliteFetcher:
    return PoliteFetcher(delay_s=delay_s, timeout_s=5.0, sleep=time.sleep, clock=time.clock)


# --------------------------------------------------------------------------- polite fetching


def test_robots_disallow_is_honoured_and_the_page_never_requested(site, tmp_path):
    time = FakeTime()
    urls = [site.url("/page.html"), site.url("/private/secret.html"), site.url("/plain.txt")]
    report = build_corpus(urls=urls, out=tmp_path / "web.txt", fetcher=fake_fetcher(time))
    assert site.paths == ["/robots.txt", "/page.html", "/plain.txt"]
    assert report.documents == 2
    assert [source for source, _ in report.skipped] == [site.url("/private/secret.html")]
    assert "robots.txt" in report.skipped[0][1] and "disallows" in report.skipped[0][1]
    assert (tmp_path / "web.txt").read_text(encoding="utf-8") == (
        ARTICLE_TEXT + "\n\n" + "Caf\u00e9 ol\u00e9,\n  kept   as is." + "\n"
    )
    assert "SECRET" not in (tmp_path / "web.txt").read_text(encoding="utf-8")


def test_every_request_carries_the_user_agent(site):
    fetcher = fake_fetcher(FakeTime())
    fetcher.fetch_text(site.url("/page.html"))
    assert USER_AGENT == f"lal/{lal.__version__} (+{lal.REPOSITORY_URL})"
    assert site.log == [("/robots.txt", USER_AGENT), ("/page.html", USER_AGENT)]
    custom = PoliteFetcher(user_agent="my-research-bot/1.0", delay_s=0.0)
    custom.fetch_text(site.url("/plain.txt"))  # robots.txt is read again: a new fetcher knows nothing
    assert site.log[2:] == [("/robots.txt", "my-research-bot/1.0"), ("/plain.txt", "my-research-bot/1.0")]


def test_delay_between_requests_to_the_same_host(site):
    time = FakeTime()
    fetcher = fake_fetcher(time, delay_s=1.5)
    fetcher.fetch_text(site.url("/page.html"))  # robots.txt first, then the page 1.5 s later
    fetcher.fetch_text(site.url("/plain.txt"))
    assert time.sleeps == [1.5, 1.5]
    time.now += 10.0  # long enough since the last request: no pause
    fetcher.fetch_text(site.url("/page.html"))
    assert time.sleeps == [1.5, 1.5]


def test_a_longer_crawl_delay_wins_and_hosts_do_not_wait_for_each_other():
    slow = site_with((200, "text/plain", b"User-agent: *\nCrawl-delay: 4\n"))
    other = site_with(None)
    try:
        time = FakeTime()
        fetcher = fake_fetcher(time, delay_s=1.0)
        fetcher.fetch_text(slow.url("/plain.txt"))
        fetcher.fetch_text(other.url("/plain.txt"))  # another host: only its own robots.txt to wait for
        fetcher.fetch_text(slow.url("/page.html"))
        assert time.sleeps == [4.0, 1.0, 3.0]  # 4 s apart on the slow host: 1 s already passed
    finally:
        slow.close()
        other.close()


@pytest.mark.parametrize(
    ("robots", "allowed"),
    [
        (None, True),  # 404: no robots.txt, everything allowed
        ((410, "text/plain", b"gone"), True),
        ((403, "text/plain", b"forbidden"), False),
        ((503, "text/plain", b"down"), False),  # server trouble: rules unknown, stay out
    ],
)
def test_robots_txt_status_codes(robots, allowed):
    srv = site_with(robots)
    try:
        fetcher = fake_fetcher(FakeTime())
        assert fetcher.allowed(srv.url("/page.html")) is allowed
        assert fetcher.allowed(srv.url("/plain.txt")) is allowed
        assert srv.paths == ["/robots.txt"]  # read once per site
        if not allowed:
            expected = f"robots.txt answered HTTP {robots[0]}, so the site's rules are unknown"
            with pytest.raises(DisallowedByRobots, match=expected):
                fetcher.fetch(srv.url("/page.html"))
            assert srv.paths == ["/robots.txt"]
    finally:
        srv.close()


def test_unreachable_site_is_skipped_with_a_reason(tmp_path, site):
    dead = site_with(None)
    dead_url = dead.url("/page.html")
    dead.close()
    urls = [dead_url, site.url("/plain.txt")]
    report = build_corpus(urls=urls, out=tmp_path / "c.txt", fetcher=fake_fetcher(FakeTime()))
    assert report.documents == 1
    assert report.skipped[0][0] == dead_url
    assert "Could not reach" in report.skipped[0][1] and "connection refused" in report.skipped[0][1]
    assert "robots.txt" not in report.skipped[0][1]  # an unreachable site says nothing about its rules


def test_unusable_pages_are_skipped_with_reasons(site, tmp_path):
    urls = [site.url("/doc.pdf"), site.url("/missing.html"), site.url("/plain.txt")]
    report = build_corpus(urls=urls, out=tmp_path / "c.txt", fetcher=fake_fetcher(FakeTime()))
    reasons = dict(report.skipped)
    assert "application/pdf, not HTML or plain text" in reasons[site.url("/doc.pdf")]
    assert "HTTP 404" in reasons[site.url("/missing.html")]
    assert report.documents == 1


def test_fetch_pages_returns_texts_and_warns_about_skips(site):
    with pytest.warns(UserWarning, match="disallows"):
        texts = fetch_pages([site.url("/private/secret.html"), site.url("/plain.txt")], delay_s=0.0)
    assert texts == ["Caf\u00e9 ol\u00e9,\n  kept   as is.\n"]


# --------------------------------------------------------------------------- files and folders


PNG_START = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def test_build_corpus_from_files_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha text.\n", encoding="utf-8")
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "b.md").write_text("# Bravo\n\nNotes.\n", encoding="utf-8")
    (notes / "sub" / "c.html").write_text(
        "<html><body><nav>MENU</nav><main><p>Charlie</p></main></body></html>", encoding="utf-8"
    )
    (notes / "a_empty.txt").write_text("  \n", encoding="utf-8")
    (notes / ".hidden.txt").write_text("HIDDEN", encoding="utf-8")
    (notes / "image.png").write_bytes(PNG_START)
    (notes / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))

    report = build_corpus(paths=[tmp_path / "a.txt", notes], out=tmp_path / "corpus.txt")

    expected = "Alpha text.\n\n# Bravo\n\nNotes.\n\nCharlie\n"
    assert (tmp_path / "corpus.txt").read_text(encoding="utf-8") == expected
    assert isinstance(report, CorpusReport) and report.path == tmp_path / "corpus.txt"
    assert report.documents == 3
    assert report.characters == len("Alpha text.") + len("# Bravo\n\nNotes.") + len("Charlie")
    assert report.skipped == [
        (str(notes / "a_empty.txt"), "no text"),
        (str(notes / "image.png"), "binary, not text"),
        (str(notes / "latin.txt"), "not valid UTF-8; save it as UTF-8 and build again"),
    ]
    assert "Wrote 3 documents" in str(report)


def test_corpus_written_inside_a_source_folder_does_not_read_itself(tmp_path):
    (tmp_path / "one.txt").write_text("one", encoding="utf-8")
    for _ in range(2):
        report = build_corpus(paths=tmp_path, out=tmp_path / "zz_corpus.txt")
    assert report.documents == 1
    assert (tmp_path / "zz_corpus.txt").read_text(encoding="utf-8") == "one\n"


def test_missing_path_and_empty_corpus_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        build_corpus(paths=[tmp_path / "nope.txt"], out=tmp_path / "c.txt")
    (tmp_path / "pic.png").write_bytes(PNG_START)
    with pytest.raises(ValueError, match="would be empty.*binary, not text"):
        build_corpus(paths=[tmp_path / "pic.png"], out=tmp_path / "c.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pic.png"]


def test_text_files_are_recognised_by_content_not_by_name(tmp_path):
    """Debian's fortune files have no suffix; a .dat file may be text too; a binary .txt is not."""
    (tmp_path / "fortunes").write_text("A fortune.\n%\nAnother one.\n", encoding="utf-8")
    (tmp_path / "notes.dat").write_text("plain words", encoding="utf-8")
    (tmp_path / "fake.txt").write_bytes(PNG_START + bytes(range(256)))
    report = build_corpus(paths=tmp_path, out=tmp_path / "out" / "c.txt")
    assert report.documents == 2
    assert report.skipped == [(str(tmp_path / "fake.txt"), "binary, not text")]


def test_links_out_of_the_named_folder_are_not_followed(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("SECRET", encoding="utf-8")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "mine.txt").write_text("mine", encoding="utf-8")
    (folder / "inner.txt").symlink_to(folder / "mine.txt")  # a link that stays inside is fine
    (folder / "passwd.txt").symlink_to(outside)
    report = build_corpus(paths=folder, out=tmp_path / "c.txt")
    assert "SECRET" not in (tmp_path / "c.txt").read_text(encoding="utf-8")
    assert report.documents == 2
    assert report.skipped == [(str(folder / "passwd.txt"), f"a link to a file outside {folder}; not followed")]


def test_skips_are_reported_one_line_per_reason(tmp_path):
    for index in range(5):
        (tmp_path / f"pic{index}.png").write_bytes(PNG_START)
    (tmp_path / "text.txt").write_text("words", encoding="utf-8")
    lines = str(build_corpus(paths=tmp_path, out=tmp_path / "out" / "c.txt")).splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("  skipped 5: binary, not text (") and lines[1].endswith("and 2 more)")
