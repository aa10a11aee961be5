"""Build a training corpus from your own text: files, folders and web pages.

A model trained on TinyShakespeare writes Shakespeare; trained on your notes, it writes like
your notes. This module turns a pile of sources into the one UTF-8 text file the rest of
``lal`` trains on:

* plain text and Markdown files are read as they are;
* HTML files and web pages are reduced to their main text (:func:`extract_main_text`), because
  menus, cookie banners and scripts repeated on every page would otherwise dominate what the
  model learns;
* web pages are fetched politely (:class:`PoliteFetcher`): one identifying User-Agent, a
  timeout, a pause between requests to the same server, and robots.txt obeyed.
"""

from __future__ import annotations

import os
import re
import time
import urllib.robotparser
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString

from lal import REPOSITORY_URL, __version__

#: The same identifying User-Agent that lal.data's downloads send (defined here too so that
#: building a corpus does not import torch).
USER_AGENT = f"lal/{__version__} (+{REPOSITORY_URL})"
#: The largest page a fetch keeps (a book-length HTML page is a few MB), and the most seconds one may take.
DEFAULT_MAX_PAGE_BYTES = 10_000_000
DEFAULT_DEADLINE_S = 60.0

# --------------------------------------------------------------------------- HTML to text

#: Elements that are never content: code, styling, and the furniture repeated on every page.
DROPPED_TAGS = ("script", "style", "noscript", "template", "nav", "aside", "form")

#: ARIA roles that mark the same furniture on sites built from generic <div>s.
DROPPED_ROLES = ("navigation", "banner", "contentinfo", "complementary")

#: Elements whose header/footer is the *content's* own (an article's title, a section's byline).
_SECTIONING = ("article", "aside", "main", "nav", "section")

#: Elements that start a new paragraph of text.
_BLOCK_TAGS = frozenset(
    "address article aside blockquote caption dd details dialog div dl dt fieldset figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 header hgroup hr li main nav ol p pre section summary table "
    "tbody tfoot thead tr ul".split()
)

_WHITESPACE = re.compile(r"\s+")


def extract_main_text(html: str) -> str:
    """The readable main text of an HTML page: paragraphs separated by blank lines.

    Picks the page's main content (``<main>``, else ``role="main"``, else its ``<article>``
    elements, else ``<body>``), drops scripts, styles, navigation, asides, forms, and the page's
    banner header and footer, then joins block-level elements with newlines and collapses the
    whitespace inside them (HTML source line breaks are not text). ``<br>`` becomes a line break
    and ``<pre>`` keeps its lines.

    A ``<header>``/``<footer>`` is dropped only when it belongs to the page, not when it sits
    inside an ``<article>``, ``<section>`` or ``<main>``: there it holds the article's own title
    or byline, which is content (the HTML standard gives it the banner role only at page level).
    """
    soup = BeautifulSoup(html, "html.parser")
    for tag in _furniture(soup):
        if not tag.decomposed:  # it may sit inside furniture removed a moment ago
            tag.decompose()
    paragraphs: list[str] = []
    for root in _main_roots(soup):
        paragraphs.extend(_paragraphs(root))
    return "\n\n".join(paragraphs)


def _furniture(soup: BeautifulSoup) -> list[Tag]:
    """The elements that are not content: dropped tags, furniture roles, page-level header/footer."""
    found = list(soup.find_all(DROPPED_TAGS))
    found += soup.find_all(attrs={"role": lambda role: role is not None and role.strip().lower() in DROPPED_ROLES})
    found += [tag for tag in soup.find_all(["header", "footer"]) if tag.find_parent(_SECTIONING) is None]
    return found


def _main_roots(soup: BeautifulSoup) -> list[Tag]:
    """Where the main content is: ``<main>``, else ``role="main"``, else the outermost ``<article>``s, else ``<body>``."""
    main = soup.find("main") or soup.find(attrs={"role": "main"})
    if main is not None:
        return [main]
    articles = [a for a in soup.find_all("article") if a.find_parent("article") is None]
    if articles:
        return articles
    return [soup.body or soup]


def _paragraphs(root: Tag) -> list[str]:
    """The non-empty paragraphs under ``root``, each with single spaces and explicit line breaks."""
    paragraphs: list[str] = []
    lines = [""]

    def end_paragraph() -> None:
        text = "\n".join(stripped for line in lines if (stripped := _WHITESPACE.sub(" ", line).strip()))
        if text:
            paragraphs.append(text)
        lines[:] = [""]

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, PreformattedString):  # comments, doctype, CDATA: not text
                continue
            if isinstance(child, NavigableString):
                lines[-1] += str(child)
            elif child.name == "br":
                lines.append("")
            elif child.name == "pre":
                end_paragraph()
                text = "\n".join(line.rstrip() for line in child.get_text().strip("\n").splitlines())
                if text.strip():
                    paragraphs.append(text)
            elif child.name in ("td", "th"):
                lines[-1] += " "
                walk(child)
                lines[-1] += " "
            elif child.name in _BLOCK_TAGS:
                end_paragraph()
                walk(child)
                end_paragraph()
            else:
                walk(child)

    walk(root)
    end_paragraph()
    return paragraphs


# --------------------------------------------------------------------------- polite fetching


class FetchError(RuntimeError):
    """A page could not be fetched or used; the message says why."""


class DisallowedByRobots(FetchError):
    """The site's robots.txt asks crawlers like ours not to fetch this page."""


@dataclass
class Page:
    """One fetched page: its address, media type (``text/html``, ``text/plain``) and decoded body."""

    url: str
    content_type: str
    text: str


_HTML_TYPES = ("text/html", "application/xhtml+xml")
_TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown")


class PoliteFetcher:
    """Fetch web pages the way a well-behaved crawler does.

    * Every request carries ``user_agent`` (by default ``lal/<version> (+<repository>)``), so a
      site's owner can see who is asking, and a ``timeout_s``, so a dead server cannot hang a
      notebook.
    * robots.txt is read once per site, with the same User-Agent and timeout, and obeyed. How
      its absence is read follows RFC 9309 (the robots exclusion standard): a 4xx answer (no
      robots.txt) allows everything, except 401/403, which Python's ``robotparser`` and we read
      as "keep out"; a 5xx answer or an unreachable server disallows everything, since the site
      may be in trouble and the rules are unknown.
    * Requests to the same host are at least ``delay_s`` seconds apart, or the site's
      ``Crawl-delay`` if that is longer.

    * A page may take at most ``deadline_s`` seconds in all and be at most ``max_bytes`` long:
      ``timeout_s`` alone restarts with every byte, so a server trickling one byte at a time, or
      sending an endless page, could otherwise hold the crawl (and the memory) indefinitely.

    ``sleep`` and ``clock`` exist so tests can check the pauses without waiting for them.
    """

    def __init__(
        self,
        user_agent: str = USER_AGENT,
        delay_s: float = 1.0,
        timeout_s: float = 10.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        if delay_s < 0 or timeout_s <= 0 or max_bytes <= 0 or deadline_s <= 0:
            raise ValueError(
                "delay_s must be >= 0, and timeout_s, max_bytes and deadline_s > 0; got "
                f"{delay_s}, {timeout_s}, {max_bytes} and {deadline_s}."
            )
        self.user_agent = user_agent
        self.delay_s = delay_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.deadline_s = deadline_s
        self.session = session or requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._robots: dict[str, urllib.robotparser.RobotFileParser] = {}  # site root -> its rules
        self._robots_problems: dict[str, str] = {}  # site root -> why its robots.txt could not be read
        self._last_request: dict[str, float] = {}  # host -> clock() when its last request was sent

    def allowed(self, url: str) -> bool:
        """Whether the site's robots.txt lets this fetcher's User-Agent fetch ``url``."""
        return self._rules_for(url).can_fetch(self.user_agent, url)

    def fetch(self, url: str) -> Page:
        """Fetch ``url`` after checking robots.txt and waiting out the delay; raise ``FetchError`` on failure."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise FetchError(f"{url} is not an http(s) address.")
        if not self.allowed(url):
            problem = self._robots_problems.get(_site(url))
            if problem and problem.startswith("unreachable"):
                raise FetchError(f"Could not reach {_site(url)} ({problem.removeprefix('unreachable: ')}); skipped.")
            if problem:
                raise DisallowedByRobots(
                    f"{url} skipped: {problem}, so the site's rules are unknown and a polite crawler stays "
                    "out. Try again later."
                )
            raise DisallowedByRobots(
                f"robots.txt of {_site(url)} disallows {url} for User-Agent {self.user_agent!r}; skipped. "
                "Respect the site's wishes: use another source, or ask its owner."
            )
        try:
            response = self._get(url)
            response.raise_for_status()
        except requests.HTTPError as exc:
            raise FetchError(f"{url} answered HTTP {exc.response.status_code}.") from exc
        except requests.RequestException as exc:
            raise FetchError(f"Could not fetch {url}: {exc.__class__.__name__} ({exc}).") from exc
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if looks_binary(response.content):
            raise FetchError(
                f"{url} sent binary data (Content-Type {content_type or 'missing'}), not text; skipped."
            )
        return Page(url=url, content_type=content_type, text=_decode(response))

    def fetch_text(self, url: str) -> str:
        """The text of ``url``: the main text of an HTML page, a plain-text page as it is."""
        page = self.fetch(url)
        if page.content_type in _HTML_TYPES:
            return extract_main_text(page.text)
        if page.content_type in _TEXT_TYPES or page.content_type == "":
            return page.text
        raise FetchError(
            f"{url} is {page.content_type}, not HTML or plain text; skipped. Convert it to text "
            "yourself and add the file to the corpus."
        )

    def _rules_for(self, url: str) -> urllib.robotparser.RobotFileParser:
        """The robots.txt rules of ``url``'s site, fetched on first use and remembered."""
        site = _site(url)
        if site not in self._robots:
            self._robots[site] = self._read_robots(site)
        return self._robots[site]

    def _read_robots(self, site: str) -> urllib.robotparser.RobotFileParser:
        rules = urllib.robotparser.RobotFileParser(site + "/robots.txt")
        try:
            response = self._get(site + "/robots.txt")
        except (requests.ConnectionError, requests.Timeout, FetchError) as exc:
            # No answer at all: the site is down or the address wrong, which says nothing about its rules.
            self._robots_problems[site] = f"unreachable: {_short_reason(exc)}"
            rules.disallow_all = True
            return rules
        except requests.RequestException as exc:
            self._robots_problems[site] = f"{site}/robots.txt could not be fetched ({exc.__class__.__name__})"
            rules.disallow_all = True
            return rules
        if response.status_code in (401, 403) or response.status_code >= 500:
            self._robots_problems[site] = f"{site}/robots.txt answered HTTP {response.status_code}"
            rules.disallow_all = True
        elif response.status_code >= 400:
            rules.allow_all = True
        else:
            rules.parse(response.content.decode("utf-8", errors="replace").splitlines())
        return rules

    def _get(self, url: str) -> requests.Response:
        """GET ``url`` once the host's last request is far enough in the past."""
        host = urlsplit(url).netloc
        if host in self._last_request:
            wait = self._delay_for(url) - (self._clock() - self._last_request[host])
            if wait > 0:
                self._sleep(wait)
        self._last_request[host] = self._clock()
        started = time.monotonic()
        response = self.session.get(url, headers={"User-Agent": self.user_agent}, timeout=self.timeout_s, stream=True)
        body = bytearray()
        with response:
            for chunk in response.iter_content(chunk_size=1 << 16):
                body += chunk
                if len(body) > self.max_bytes:
                    raise FetchError(
                        f"{url} is larger than {self.max_bytes / 1e6:g} MB; skipped (raise --max-page-mb to allow it)."
                    )
                if time.monotonic() - started > self.deadline_s:
                    raise FetchError(
                        f"{url} took more than {self.deadline_s:g} s to arrive; skipped (raise --deadline to wait longer)."
                    )
        response._content = bytes(body)  # what requests does when it reads the body itself
        return response

    def _delay_for(self, url: str) -> float:
        """``delay_s``, or the site's Crawl-delay when that is longer."""
        rules = self._robots.get(_site(url))
        crawl_delay = rules.crawl_delay(self.user_agent) if rules is not None else None
        return max(self.delay_s, float(crawl_delay or 0.0))


def _short_reason(exc: BaseException) -> str:
    """"connection refused", "timed out", … rather than a page of nested exception text."""
    text = str(exc)
    if isinstance(exc, FetchError):
        return text
    for known in ("Connection refused", "Name or service not known", "timed out", "No route to host"):
        if known.lower() in text.lower():
            return known.lower()
    return exc.__class__.__name__


def looks_binary(data: bytes) -> bool:
    """True for bytes that are no text: a NUL byte, or undecodable as UTF-8 *and* full of control bytes.

    Text files never hold NUL; images, archives, PDFs and executables nearly always do in their
    first kilobytes. Latin-1 text is not UTF-8 but has few control bytes, so it is not "binary".
    """
    head = data[:8192]
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
        return False
    except UnicodeDecodeError as err:
        if len(data) > len(head) and err.start >= len(head) - 4:  # a character cut in two by the sample
            return False
    controls = sum(byte < 32 and byte not in (9, 10, 12, 13) for byte in head)
    return controls > len(head) // 100


def _site(url: str) -> str:
    """``scheme://host[:port]``: robots.txt applies per site, not per page."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _decode(response: requests.Response) -> str:
    """The body as text, trusting a declared charset and otherwise trying UTF-8 first.

    ``requests`` assumes ISO-8859-1 for text without a declared charset, which garbles every
    non-ASCII character of a UTF-8 page, the usual case today.
    """
    if "charset" in response.headers.get("Content-Type", "").lower():
        return response.text
    try:
        return response.content.decode("utf-8")
    except UnicodeDecodeError:
        return response.content.decode(response.apparent_encoding or "latin-1", errors="replace")


def fetch_pages(
    urls: Iterable[str],
    delay_s: float = 1.0,
    timeout_s: float = 10.0,
    user_agent: str = USER_AGENT,
) -> list[str]:
    """The text of each page that could be fetched, in order; the others are skipped with a warning.

    A shortcut for a :class:`PoliteFetcher`'s :meth:`~PoliteFetcher.fetch_text` over a list.
    """
    fetcher = PoliteFetcher(user_agent=user_agent, delay_s=delay_s, timeout_s=timeout_s)
    texts = []
    for url in urls:
        try:
            texts.append(fetcher.fetch_text(url))
        except FetchError as exc:
            warnings.warn(str(exc), stacklevel=2)
    return texts


# --------------------------------------------------------------------------- the corpus

#: File suffixes read as HTML (their main text is extracted); every other file is read as plain
#: text when its content is UTF-8 text (fortune files, READMEs without a suffix, .txt, .md, …).
HTML_SUFFIXES = (".html", ".htm")


@dataclass
class CorpusReport:
    """What :func:`build_corpus` wrote: where, how much, and what it left out and why."""

    path: Path
    documents: int = 0
    characters: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)

    def __str__(self) -> str:
        lines = [f"Wrote {self.documents} documents, {self.characters:,} characters, to {self.path}."]
        by_reason: dict[str, list[str]] = {}
        for source, reason in self.skipped:
            by_reason.setdefault(reason, []).append(source)
        for reason, sources in by_reason.items():  # one line per reason, however many files share it
            shown = ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
            lines.append(f"  skipped {len(sources)}: {reason} ({shown})" if len(sources) > 1
                         else f"  skipped {shown}: {reason}")
        return "\n".join(lines)


def build_corpus(
    paths: str | Path | Iterable[str | Path] = (),
    urls: str | Iterable[str] = (),
    out: str | Path = "corpus.txt",
    fetcher: PoliteFetcher | None = None,
) -> CorpusReport:
    """Gather files, folders and web pages into one UTF-8 text file at ``out``.

    Documents are separated by a blank line. Folders are walked recursively in sorted order, so
    the same sources always give the same corpus; hidden files and folders are ignored.
    Sources that cannot be used (an unknown file type, a file that is not UTF-8, a page
    robots.txt disallows, a server error) are skipped and listed in the report, while a path
    that does not exist at all is an error, since it is most likely a typo. The file is written
    atomically: it appears only once complete.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    urls = [urls] if isinstance(urls, str) else list(urls)
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"No such file or folder: {', '.join(missing)}. Check the path(s).")
    out = Path(out)
    report = CorpusReport(path=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as sink:
            for source, text in _documents(paths, urls, fetcher, exclude=out, report=report):
                text = text.strip()
                if not text:
                    report.skipped.append((source, "no text"))
                    continue
                sink.write(("\n\n" if report.documents else "") + text)
                report.documents += 1
                report.characters += len(text)
            if report.documents:
                sink.write("\n")
        if report.documents == 0:
            reasons = "; ".join(f"{source}: {reason}" for source, reason in report.skipped) or "no sources given"
            raise ValueError(f"The corpus would be empty ({reasons}). Nothing was written.")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def _documents(
    paths: list[str | Path],
    urls: list[str],
    fetcher: PoliteFetcher | None,
    exclude: Path,
    report: CorpusReport,
) -> Iterator[tuple[str, str]]:
    """Yield (source, text) for every usable source; record the unusable ones in ``report``."""
    for path, outside in _expand_paths(paths, exclude):
        if outside is not None:
            report.skipped.append((str(path), f"a link to a file outside {outside}; not followed"))
            continue
        try:
            yield str(path), _read_file(path)
        except ValueError as exc:
            report.skipped.append((str(path), str(exc)))
    if urls:
        fetcher = fetcher or PoliteFetcher()
    for url in urls:
        try:
            yield url, fetcher.fetch_text(url)
        except FetchError as exc:
            report.skipped.append((url, str(exc)))


def _expand_paths(paths: list[str | Path], exclude: Path) -> Iterator[tuple[Path, Path | None]]:
    """Files as given, folders as their files (recursively, sorted), minus hidden ones and ``exclude``.

    Each file comes with ``None``, or with the folder it was found in when it is a link that
    leads out of that folder: a corpus never reads beyond the folders the learner named.
    """
    excluded = exclude.resolve()
    for given in map(Path, paths):
        if given.is_dir():
            root = given.resolve()
            for path in sorted(
                p for p in given.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(given).parts)
            ):
                if path.resolve() == excluded:
                    continue
                yield path, (None if path.resolve().is_relative_to(root) else given)
        elif given.resolve() != excluded:
            yield given, None


def _read_file(path: Path) -> str:
    """The text of one file, decided by its content; ``ValueError`` saying why a file cannot be used."""
    data = path.read_bytes()
    if looks_binary(data):
        raise ValueError("binary, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8; save it as UTF-8 and build again") from None
    return extract_main_text(text) if path.suffix.lower() in HTML_SUFFIXES else text
