"""URL canonicalisation, job-line validation and link resolution for http(s) URLs."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urljoin, urlsplit

from w3lib.url import canonicalize_url

from shared.errors import InvalidURL

HTTP_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

# A leading "scheme:" (RFC 3986 section 3.1).
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
# "host:port" typed without a scheme, e.g. "localhost:8080" or "example.com:8080/x".
_HOST_PORT_RE = re.compile(r"[A-Za-z0-9.\-]+:[0-9]+(?:[/?#]|$)")
# An absolute http(s) URL with an authority ("http://...", any case).
_ABSOLUTE_HTTP_RE = re.compile(r"https?://", re.IGNORECASE)
# A URL that is already canonical apart from default port, query order and fragment.
_FAST_PAIR = r"[A-Za-z0-9._~\-]+=[A-Za-z0-9._~\-]*"
_FAST_RE = re.compile(
    r"(?P<scheme>https?)://(?P<host>[a-z0-9](?:[a-z0-9.\-]*[a-z0-9])?)"
    r"(?::(?P<port>[1-9][0-9]{0,4}))?"
    r"(?P<path>/[A-Za-z0-9._~!$&'()*+,=:@/\-]*)"
    rf"(?:\?(?P<query>{_FAST_PAIR}(?:&{_FAST_PAIR})*))?"
    r"(?:#.*)?",
    re.DOTALL,
)
_DOT_SEGMENT_RE = re.compile(r"/\.\.?(?:/|$)")
# A fragment w3lib leaves as it is (its _FRAGMENT_SAFEST_CHARS; "%" not decoded, no "#").
_SAFE_FRAGMENT_RE = re.compile(r"[A-Za-z0-9:/?@!$&'()*+,;=\-._~%]*")
# WHATWG "forbidden domain code points": C0 controls, space, DEL and URL delimiters.
_FORBIDDEN_HOST_RE = re.compile(r"[\x00-\x20\x7f#%/:<>?@\[\\\]^|]")
# Control characters are never accepted in a job line (after stripping its ends).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# What browsers strip from both ends of an href (C0 controls and space) ...
_EDGE_CHARS = "".join(chr(c) for c in range(0x21))
# ... and remove from inside it (ASCII tab and newlines).
_INNER_WS_TABLE = str.maketrans("", "", "\t\r\n")


def canonicalize(url: str, keep_fragment: bool = False) -> str:
    """Return the one canonical form of an http(s) URL; raises ValueError if unparseable.

    w3lib lower-cases scheme and host, IDNA-encodes the host, sorts query arguments,
    normalises percent-encoding, resolves dot segments, drops the fragment and turns
    an empty path into "/". It keeps default ports, so those are removed here.

    With ``keep_fragment`` (a job's ``fingerprint.keepFragment``) the fragment is kept, as
    w3lib's ``canonicalize_url(url, keep_fragments=True)`` writes it (percent-encoded where
    needed, never decoded; an empty one dropped); everything before it is the same.
    """
    fast = _fast_canonical_keeping_fragment(url) if keep_fragment else _fast_canonical(url)
    return fast if fast is not None else _canonicalize_slow(url, keep_fragment)


def _fast_canonical_keeping_fragment(url: str) -> str | None:
    """:func:`_fast_canonical` with the fragment kept, when w3lib would keep it as it is."""
    plain, _, fragment = url.partition("#")
    if _SAFE_FRAGMENT_RE.fullmatch(fragment) is None:
        return None
    fast = _fast_canonical(plain)
    return f"{fast}#{fragment}" if fast is not None and fragment else fast


def _fast_canonical(url: str) -> str | None:
    """Canonical form of a plain URL without calling w3lib (about 15x faster), else None.

    Only URLs whose canonical form is known without decoding anything qualify: lower-case
    ASCII host, path of unreserved/sub-delim characters with no dot segment or params,
    and a query of simple "key=value" pairs. The unit tests check it agrees with w3lib.
    """
    match = _FAST_RE.fullmatch(url)
    if match is None or _DOT_SEGMENT_RE.search(match["path"]):
        return None
    scheme, host, port = match["scheme"], match["host"], match["port"]
    if port is not None:
        number = int(port)
        if number > 65535:
            return None
        if number != DEFAULT_PORTS[scheme]:
            host = f"{host}:{port}"
    query = match["query"]
    if query is None:
        return f"{scheme}://{host}{match['path']}"
    if "&" in query:
        query = "&".join(sorted(query.split("&"), key=_pair_key))
    return f"{scheme}://{host}{match['path']}?{query}"


def _pair_key(pair: str) -> tuple[str, str]:
    """Sort key of a "key=value" query pair: by key, then by value (as w3lib sorts)."""
    key, _, value = pair.partition("=")
    return key, value


def _canonicalize_slow(url: str, keep_fragment: bool = False) -> str:
    """canonicalize() through w3lib, for any URL (its fragment kept with ``keep_fragment``)."""
    canonical = canonicalize_url(url, keep_fragments=keep_fragment)
    parts = urlsplit(canonical)
    scheme = parts.scheme.lower()
    netloc = _without_default_port(scheme, parts.netloc)
    path = parts.path or ("/" if netloc else "")
    if scheme == parts.scheme and netloc == parts.netloc and path == parts.path:
        return canonical
    return SplitResult(scheme, netloc, path, parts.query, parts.fragment).geturl()


def _without_default_port(scheme: str, netloc: str) -> str:
    """Drop ":80" from http and ":443" from https netlocs."""
    default = DEFAULT_PORTS.get(scheme)
    if default is None:
        return netloc
    suffix = f":{default}"
    host = netloc.rpartition("@")[2]
    if host.endswith(suffix):
        return netloc[: -len(suffix)]
    return netloc


def validate_job_url(line: str, keep_fragment: bool = False) -> str:
    """Validate one line of a job body and return its canonical URL (with its fragment, with
    ``keep_fragment``); raise InvalidURL."""
    text = line.strip()
    candidate = _with_scheme(text)
    result = (None if candidate is None or _CONTROL_RE.search(text)
              else _checked_canonical(candidate, keep_fragment))
    url = result or candidate or text
    if "://" in url and has_credentials(url):  # not echoed: it holds a password
        raise CredentialsInURL()
    if result is None:
        raise InvalidURL(text)
    return result


class CredentialsInURL(InvalidURL):
    """A job URL with ``user:pass@`` (aiohttp would send them as Basic auth to wherever it
    leads); its message never holds the line."""

    REASON = "credentials in URLs are not accepted (use hostHeaders or sessions)"

    def __init__(self) -> None:
        super().__init__(self.REASON)


class URLTooLong(InvalidURL):
    """A job line whose canonical URL is longer than ``maxURLLength``: named by its line
    number, never echoed (it may be a megabyte)."""

    def __init__(self, line_no: int, length: int, limit: int) -> None:
        super().__init__(f"line {line_no} is {length} characters long (at most {limit}: "
                         "maxURLLength)")


def has_credentials(url: str) -> bool:
    """Whether an absolute URL's authority holds user info (``user[:pass]@``)."""
    start = url.find("://") + 3
    return "@" in url[start:authority_end(url, start)]


def authority_end(url: str, start: int) -> int:
    """Where the authority starting at ``start`` (just after "://") ends: at its first "/",
    "?" or "#", else at the end of ``url``."""
    end = len(url)
    for c in "/?#":
        if (i := url.find(c, start)) != -1 and i < end:
            end = i
    return end


def _with_scheme(text: str) -> str | None:
    """Return ``text`` as an absolute URL, prepending "http://" if it has no scheme."""
    if not text:
        return None
    match = _SCHEME_RE.match(text)
    if match is not None and match.group(0)[:-1].lower() in HTTP_SCHEMES:
        return text
    if match is not None and not _HOST_PORT_RE.match(text):
        return None
    if text.startswith("//"):
        return "http:" + text
    return "http://" + text


def resolve(base: str, href: str, keep_fragment: bool = False) -> str | None:
    """Resolve an href found on page ``base``; canonical http(s) URL or None.

    With ``keep_fragment`` (a job's ``fingerprint.keepFragment``) the href's fragment is kept:
    ``#top`` on ``http://h/p`` is ``http://h/p#top``. The base's own fragment never carries
    over (RFC 3986 5.2.2: an empty href is the base without it)."""
    cleaned = href.strip(_EDGE_CHARS)
    if "\t" in cleaned or "\n" in cleaned or "\r" in cleaned:
        cleaned = cleaned.translate(_INNER_WS_TABLE)
    keep = keep_fragment and "#" in cleaned  # else urljoin(base#f, "") keeps the base's
    if _ABSOLUTE_HTTP_RE.match(cleaned):
        # urljoin would treat "http:///x" or "http://" as relative to a same-scheme base.
        return _checked_canonical(cleaned, keep)
    try:
        joined = urljoin(base, cleaned)
    except ValueError:
        return None
    return _checked_canonical(joined, keep)


class Resolver:
    """Resolves the hrefs of one page: ``resolve(base, href)`` with the base parsed once.

    The common hrefs (a plain path, optionally with a query and fragment, against a base
    already in canonical form) are joined here without ``urljoin``, by the same algorithm
    (Python's, including its merging of empty segments in relative paths); anything else goes
    through :func:`resolve`. A property test checks both give the same answer.
    """

    __slots__ = ("_dir", "_origin", "base")

    def __init__(self, base: str) -> None:
        self.base = base
        self._origin: str | None = None
        self._dir: list[str] = []  # the base path's segments but the last
        if _fast_canonical(base) == base:
            path_start = base.index("/", base.index("://") + 3)
            self._origin = base[:path_start]
            self._dir = base[path_start:].partition("?")[0].split("/")[:-1]

    def __call__(self, href: str) -> str | None:
        match = (None if self._origin is None or not href.isascii()
                 else _SIMPLE_REF_RE.fullmatch(href))
        if match is None:
            return resolve(self.base, href)
        path, query = match["path"], match["query"]
        if path.startswith("/"):
            segments = path.split("/")
        else:
            segments = self._dir + path.split("/")
            segments[1:-1] = [s for s in segments[1:-1] if s]
        resolved: list[str] = []
        for segment in segments:
            if segment == "..":
                if resolved:
                    resolved.pop()
            elif segment != ".":
                resolved.append(segment)
        if segments[-1] in (".", ".."):
            resolved.append("")
        joined = "/".join(resolved)
        if not joined.startswith("/"):
            joined = "/" + joined
        if not query:
            if "%" not in path:  # canonical already: the base is, and dot segments are gone
                return f"{self._origin}{joined}"
            return _checked_canonical(f"{self._origin}{joined}")
        return _checked_canonical(f"{self._origin}{joined}?{query}")


class FragmentResolver(Resolver):
    """A :class:`Resolver` keeping each href's fragment (``resolve(..., keep_fragment=True)``), for
    the pages of a job with ``fingerprint.keepFragment``; the base may have a fragment (the
    page's URL in such a job), which no link inherits. An href without a fragment is the
    Resolver's; one with a plain path (or none) and a fragment w3lib keeps as it is is joined
    here too. A property test checks it agrees with ``resolve(..., keep_fragment=True)``."""

    __slots__ = ("_plain",)

    def __init__(self, base: str) -> None:
        plain, hash_, _ = base.partition("#")
        super().__init__(plain if hash_ and _fast_canonical_keeping_fragment(base) == base
                         else base)
        self.base = base
        self._plain = plain

    def __call__(self, href: str) -> str | None:
        path, hash_, fragment = href.partition("#")
        if not hash_:
            return super().__call__(href)
        if (self._origin is None or _SAFE_FRAGMENT_RE.fullmatch(fragment) is None
                or (path and (not path.isascii() or _SIMPLE_REF_RE.fullmatch(path) is None))):
            return resolve(self.base, href, True)
        joined = super().__call__(path) if path else self._plain
        return f"{joined}#{fragment}" if joined is not None and fragment else joined


# A relative href the Resolver joins itself: a non-empty path that neither starts with a
# scheme nor with "//", made of plain characters, then an optional query and fragment.
_SIMPLE_REF_RE = re.compile(
    r"(?![A-Za-z][A-Za-z0-9+.\-]*:|//)(?P<path>[A-Za-z0-9._~!$&'()*+,=:@/%\-]+)"
    r"(?:\?(?P<query>[^#\s\\]*))?(?:#.*)?",
    re.DOTALL,
)


def _checked_canonical(url: str, keep_fragment: bool = False) -> str | None:
    """Canonicalise an absolute URL if it is http(s) with a usable host, else None (its
    fragment kept with ``keep_fragment``)."""
    fast = _fast_canonical_keeping_fragment(url) if keep_fragment else _fast_canonical(url)
    if fast is not None:
        return fast
    if not _is_fetchable(url):
        return None
    try:
        canonical = _canonicalize_slow(url, keep_fragment)  # the fast path already said no
    except ValueError:
        return None
    if not canonical.isascii() or not _is_fetchable(canonical):
        return None
    return canonical


def _is_fetchable(url: str) -> bool:
    """True if ``url`` is http(s) with a valid non-empty host and a valid port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme.lower() not in HTTP_SCHEMES or port == 0:
        return False
    return _is_valid_host(parts.netloc.rpartition("@")[2], parts.hostname or "")


def _is_valid_host(hostport: str, hostname: str) -> bool:
    """Check a host: a bracketed IPv6 literal, or a name without forbidden characters."""
    if not hostname:
        return False
    if hostport.startswith("["):
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            return False
        return True
    return _FORBIDDEN_HOST_RE.search(hostname) is None


def host_key(url: str) -> str:
    """Return "scheme://host[:port]" of a canonical URL (the politeness key)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
