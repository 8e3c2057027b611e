"""HttpSource / HttpLocation against a real local HTTP(S) server with injected faults."""

from __future__ import annotations

import random
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import urllib3
from urllib3.exceptions import InsecureRequestWarning

from tests.blocks.httpserver import ALWAYS, Faults, FileServer
from vcbfs.blocks.confine import ConfinementError
from vcbfs.blocks.http import (
    RENEWALS,
    HttpLocation,
    HttpOptions,
    HttpSession,
    HttpSource,
    redact_url,
)
from vcbfs.errors import (
    AccessDeniedError,
    NotFoundError,
    ReadError,
    UnsupportedError,
    VcbfsError,
)

DISK = "/folder/vm one/vm one-flat.vmdk"
SIZE = 3 * 1024 * 1024 + 12345  # not a multiple of anything
DATA = random.Random(20240601).randbytes(SIZE)
COOKIE = 'vmware_soap_session="52a1c3e0-secret-cookie-value"'

FAST = {
    "connect_timeout": 2.0,
    "read_timeout": 0.3,
    "backoff_base": 0.005,
    "backoff_max": 0.02,
}


def options(**kw: object) -> HttpOptions:
    return HttpOptions(**{**FAST, **kw})  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer({DISK: DATA}) as srv:
        yield srv


@pytest.fixture
def session() -> Iterator[HttpSession]:
    with HttpSession(options(cookie=COOKIE)) as s:
        yield s


def open_disk(server: FileServer, session: HttpSession) -> HttpSource:
    src = HttpSource(session, server.url(DISK))
    server.reset_counts()
    return src


# -- size and plain reads --------------------------------------------------------------------


def test_size_from_head(server: FileServer, session: HttpSession) -> None:
    src = HttpSource(session, server.url(DISK))
    assert src.size == SIZE
    assert [r.method for r in server.requests] == ["HEAD"]


@pytest.mark.parametrize("fault", ["no_length", "no_head"])
def test_size_from_ranged_get_when_head_does_not_tell(
    server: FileServer, session: HttpSession, fault: str
) -> None:
    server.faults = Faults(head_length=fault != "no_length", head_allowed=fault != "no_head")
    src = HttpSource(session, server.url(DISK))
    assert src.size == SIZE
    assert [r.method for r in server.requests] == ["HEAD", "GET"]
    assert server.requests[1].headers["Range"] == "bytes=0-0"


def test_empty_file_size_from_unsatisfiable_probe(session: HttpSession) -> None:
    with FileServer({"/folder/empty.vmdk": b""}) as srv:
        srv.faults = Faults(head_length=False)
        src = HttpSource(session, srv.url("/folder/empty.vmdk"))
        assert src.size == 0
        assert src.read_at(0, 10) == b""
        assert srv.count("GET") == 1  # only the probe; an empty read asks nothing


def test_random_ranges_match_the_file(server: FileServer, session: HttpSession) -> None:
    src = open_disk(server, session)
    rng = random.Random(7)
    for _ in range(150):
        offset = rng.randrange(SIZE)
        n = rng.choice([1, 511, 512, 4096, 65536, rng.randrange(1, 300_000)])
        assert src.read_at(offset, n) == DATA[offset : offset + n]
    # crossing the end is short exactly there; at or past the end is empty
    assert src.read_at(SIZE - 100, 4096) == DATA[-100:]
    assert src.read_at(SIZE, 10) == b""
    assert src.read_at(SIZE + 5, 10) == b""
    assert src.read_at(0, 2 * SIZE) == DATA
    assert src.read_at(123, 0) == b""
    ranges = [r.headers["Range"] for r in server.requests]
    assert f"bytes=0-{SIZE - 1}" in ranges
    assert f"bytes={SIZE - 100}-{SIZE - 1}" in ranges


def test_connections_are_kept_alive_and_pooled(server: FileServer, session: HttpSession) -> None:
    src = open_disk(server, session)
    for i in range(40):
        assert src.read_at(i * 1000, 1000) == DATA[i * 1000 : (i + 1) * 1000]
    assert server.count("GET") == 40
    assert server.connections <= 1


def test_concurrent_reads_from_8_threads(server: FileServer, session: HttpSession) -> None:
    src = open_disk(server, session)

    def worker(seed: int) -> int:
        rng = random.Random(seed)
        for _ in range(40):
            offset = rng.randrange(SIZE)
            n = rng.randrange(1, 200_000)
            assert src.read_at(offset, n) == DATA[offset : offset + n]
        return seed

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(worker, range(8))) == list(range(8))
    assert server.count("GET") == 8 * 40
    assert server.connections <= session.options.pool_size


def test_server_ignoring_range_is_fine_only_for_the_whole_file(
    server: FileServer, session: HttpSession
) -> None:
    src = open_disk(server, session)
    server.faults = Faults(ignore_range=True)
    assert src.read_at(0, SIZE) == DATA
    with pytest.raises(ReadError, match="ignored the Range header"):
        src.read_at(10, 100)
    assert server.count("GET") == 2  # no retries for a server that does not do ranges


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        Faults(drop_first=3),
        Faults(reset_first=3),
        Faults(status=503, status_first=3),
        Faults(status=500, status_first=1),
        Faults(status=502, status_first=1),
        Faults(status=504, status_first=2),
    ],
    ids=["drop", "reset", "503", "500", "502", "504"],
)
def test_retries_heal_transient_failures(
    server: FileServer, session: HttpSession, faults: Faults
) -> None:
    src = open_disk(server, session)
    expected = 1 + max(faults.drop_first, faults.reset_first, faults.status_first)
    server.faults = faults
    assert src.read_at(1000, 300_000) == DATA[1000:301_000]
    assert server.count("GET") == expected
    assert src.read_at(5, 5) == DATA[5:10]  # and the pool works normally afterwards


@pytest.mark.parametrize("in_body", [False, True], ids=["before-headers", "mid-body"])
def test_retries_heal_a_stalled_server(
    server: FileServer, session: HttpSession, in_body: bool
) -> None:
    src = open_disk(server, session)
    server.faults = Faults(stall_first=1, stall_seconds=3.0, stall_in_body=in_body)
    t0 = time.monotonic()
    assert src.read_at(4096, 100_000) == DATA[4096:104_096]
    elapsed = time.monotonic() - t0
    assert server.count("GET") == 2
    assert 0.25 <= elapsed < 2.0  # waited for the read timeout, not for the stall


def test_stall_while_opening_is_retried(server: FileServer, session: HttpSession) -> None:
    server.faults = Faults(stall_first=1, stall_seconds=3.0)
    assert HttpSource(session, server.url(DISK)).size == SIZE
    assert server.count("HEAD") == 2


@pytest.mark.parametrize(
    ("faults", "cause"),
    [
        (Faults(status=503, status_first=ALWAYS), "HTTP 503"),
        (Faults(drop_first=ALWAYS), "dropped after"),
        (Faults(reset_first=ALWAYS), "reset"),
        (Faults(stall_first=ALWAYS, stall_seconds=3.0), "read timed out"),
    ],
    ids=["503", "drop", "reset", "stall"],
)
def test_exhausted_retries_give_read_error(server: FileServer, faults: Faults, cause: str) -> None:
    with HttpSession(options(retries=2, cookie=COOKIE)) as session:
        src = open_disk(server, session)
        server.faults = faults
        with pytest.raises(ReadError) as info:
            src.read_at(0x1234, 100)
    msg = str(info.value)
    assert server.count("GET") == 3
    assert src.name in msg
    assert "at offset 0x1234" in msg
    assert "giving up after 3 attempts" in msg
    assert cause in msg
    assert "secret-cookie" not in msg
    assert info.value.offset == 0x1234


def test_connection_refused_is_retried_then_reported(session: HttpSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    url = f"http://127.0.0.1:{port}/folder/x.vmdk?dcPath=dc&dsName=ds1"
    t0 = time.monotonic()
    with pytest.raises(ReadError) as info:
        HttpSource(session, url)
    assert time.monotonic() - t0 < 2.0
    msg = str(info.value)
    assert "giving up after 6 attempts" in msg
    assert "cannot connect" in msg
    assert "refused" in msg.lower()
    assert f"127.0.0.1:{port}/folder/x.vmdk" in msg


def test_retry_after_is_honoured(server: FileServer) -> None:
    with HttpSession(options(retry_after_max=5.0)) as session:
        src = open_disk(server, session)
        server.faults = Faults(status=503, status_first=1, retry_after="1")
        t0 = time.monotonic()
        assert src.read_at(0, 10) == DATA[:10]
        assert time.monotonic() - t0 >= 0.95
    assert server.count("GET") == 2


def test_long_retry_after_is_capped(server: FileServer) -> None:
    with HttpSession(options(retry_after_max=0.05)) as session:
        src = open_disk(server, session)
        server.faults = Faults(status=429, status_first=2, retry_after="3600")
        t0 = time.monotonic()
        assert src.read_at(0, 10) == DATA[:10]
        assert time.monotonic() - t0 < 1.0
    assert server.count("GET") == 3


def test_total_retry_time_is_bounded(server: FileServer) -> None:
    opts = options(retries=1000, backoff_base=0.05, backoff_max=0.05, retry_deadline=0.5)
    with HttpSession(opts) as session:
        src = open_disk(server, session)
        server.faults = Faults(status=503, status_first=ALWAYS)
        t0 = time.monotonic()
        with pytest.raises(ReadError, match="giving up after"):
            src.read_at(0, 10)
        assert time.monotonic() - t0 < 1.5
    assert 3 <= server.count("GET") < 100


# -- refusals: typed, immediate --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AccessDeniedError), (403, AccessDeniedError), (404, NotFoundError)],
)
def test_refusals_are_typed_and_not_retried(
    server: FileServer, session: HttpSession, status: int, error: type[VcbfsError]
) -> None:
    src = open_disk(server, session)
    server.faults = Faults(status=status, status_first=ALWAYS)
    with pytest.raises(error) as info:
        src.read_at(512, 512)
    assert server.count() == 1
    assert f"HTTP {status}" in str(info.value)
    assert info.value.source == src.name
    assert info.value.offset == 512
    assert "secret-cookie" not in str(info.value)

    server.reset_counts()
    with pytest.raises(error):
        HttpSource(session, server.url(DISK))
    assert server.count() == 1


def test_missing_file_is_not_found(server: FileServer, session: HttpSession) -> None:
    with pytest.raises(NotFoundError, match="HTTP 404") as info:
        HttpSource(session, server.url("/folder/vm one/nope.vmdk"))
    assert isinstance(info.value, FileNotFoundError)
    assert server.count() == 1


def test_range_beyond_a_shrunk_file_is_416(server: FileServer, session: HttpSession) -> None:
    src = open_disk(server, session)
    server.files[DISK] = DATA[:1000]
    with pytest.raises(ReadError, match="beyond the end of the file") as info:
        src.read_at(5000, 100)
    assert "bytes */1000" in str(info.value)
    assert server.count() == 1


def test_size_change_is_detected(server: FileServer, session: HttpSession) -> None:
    src = open_disk(server, session)
    server.files[DISK] = DATA + b"more"
    with pytest.raises(ReadError, match="size changed"):
        src.read_at(0, 10)


# -- secrets ---------------------------------------------------------------------------------


def test_cookie_is_sent_and_never_shown(server: FileServer, session: HttpSession) -> None:
    src = HttpSource(session, server.url(DISK))
    src.read_at(0, 10)
    assert [r.headers.get("Cookie") for r in server.requests] == [COOKIE, COOKIE]
    assert "secret-cookie" not in repr(session.options)
    assert "secret-cookie" not in repr(src)
    server.faults = Faults(status=401, status_first=ALWAYS)
    with pytest.raises(AccessDeniedError) as info:
        src.read_at(0, 10)
    assert "secret-cookie" not in str(info.value)
    assert "secret-cookie" not in repr(info.value)


def test_no_cookie_no_cookie_header(server: FileServer) -> None:
    with HttpSession(options()) as session:
        HttpSource(session, server.url(DISK)).read_at(0, 1)
    assert all("Cookie" not in r.headers for r in server.requests)


def test_credentials_in_url_become_basic_auth_and_are_redacted(
    server: FileServer, session: HttpSession
) -> None:
    url = server.url(DISK).replace("://", "://root:s3cr%40t@")
    src = HttpSource(session, url)
    assert src.name == server.url(DISK)
    assert server.requests[0].headers["Authorization"] == "Basic cm9vdDpzM2NyQHQ="  # root:s3cr@t
    server.faults = Faults(status=503, status_first=ALWAYS)
    with pytest.raises(ReadError) as info:
        src.read_at(0, 1)
    assert "s3cr" not in str(info.value)
    assert HttpLocation(session, url).name == server.url(DISK)


def test_bad_options_do_not_echo_secrets() -> None:
    with pytest.raises(ValueError, match="single header line") as info:
        HttpOptions(cookie="a=secret-cookie\r\nX-Evil: 1")
    with pytest.raises(ValueError, match="single header line"):
        HttpOptions(cookie="a=secret-cookie-\u2019")
    assert "secret-cookie" not in str(info.value)
    with pytest.raises(ValueError, match="SHA-256"):
        HttpOptions(thumbprint="ab:cd")
    with pytest.raises(ValueError, match="SHA-256"):
        HttpOptions(thumbprint="zz" * 32)


def test_not_an_http_url(session: HttpSession) -> None:
    with pytest.raises(UnsupportedError, match="not an http"):
        HttpSource(session, "ftp://example.com/folder/x.vmdk")
    with pytest.raises(UnsupportedError, match="bad port"):
        HttpSource(session, "https://example.com:99999/folder/x.vmdk")


def test_redact_url() -> None:
    assert (
        redact_url("https://u:p@h.example:8443/folder/a%20b.vmdk?dcPath=dc&dsName=ds#frag")
        == "https://h.example:8443/folder/a%20b.vmdk?dcPath=dc&dsName=ds"
    )
    assert redact_url("https://[::1]/folder/x") == "https://[::1]/folder/x"


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(cert: tuple[str, str, str]) -> Iterator[FileServer]:
    with FileServer({DISK: DATA}, tls=(cert[0], cert[1])) as srv:
        yield srv


def read_over_tls(srv: FileServer, **kw: object) -> bytes:
    with HttpSession(options(**kw)) as session:
        src = HttpSource(session, srv.url(DISK))
        assert src.size == SIZE
        return src.read_at(100, 1000)


def test_tls_default_verification_refuses_self_signed(tls_server: FileServer) -> None:
    with pytest.raises(AccessDeniedError) as info:
        read_over_tls(tls_server)
    msg = str(info.value)
    assert "verification failed" in msg
    assert "self-signed" in msg or "self signed" in msg
    assert "thumbprint" in msg and "verify=False" in msg
    assert tls_server.connections == 1  # refused at once, no retries
    assert tls_server.count() == 0


@pytest.mark.parametrize("form", ["colons-upper", "plain-lower"])
def test_tls_matching_thumbprint_is_accepted(
    tls_server: FileServer, cert: tuple[str, str, str], form: str
) -> None:
    thumb = cert[2] if form == "colons-upper" else cert[2].replace(":", "").lower()
    assert read_over_tls(tls_server, thumbprint=thumb) == DATA[100:1100]


def test_tls_wrong_thumbprint_is_refused(
    tls_server: FileServer, cert: tuple[str, str, str]
) -> None:
    wrong = "00" * 32
    with pytest.raises(AccessDeniedError) as info:
        read_over_tls(tls_server, thumbprint=wrong)
    msg = str(info.value)
    assert f"server certificate fingerprint {cert[2]} does not match pinned" in msg
    assert ":".join(["00"] * 32) in msg
    assert tls_server.connections == 1
    assert tls_server.count() == 0


def test_tls_ca_file_is_accepted(tls_server: FileServer, cert: tuple[str, str, str]) -> None:
    assert read_over_tls(tls_server, ca_file=cert[0]) == DATA[100:1100]


def test_tls_ca_file_still_checks_the_host_name(
    tls_server: FileServer, cert: tuple[str, str, str]
) -> None:
    try:
        socket.getaddrinfo("localhost", tls_server.port)
    except OSError:
        pytest.skip("localhost does not resolve here (no /etc/hosts)")
    with HttpSession(options(ca_file=cert[0])) as session, pytest.raises(AccessDeniedError) as info:
        HttpSource(session, tls_server.url(DISK).replace("127.0.0.1", "localhost"))
    assert "verification failed" in str(info.value)
    assert "localhost" in str(info.value)


def test_tls_verify_false_is_accepted_without_warnings(tls_server: FileServer) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_over_tls(tls_server, verify=False) == DATA[100:1100]
    assert [w.message for w in caught] == []


def test_tls_verify_false_does_not_silence_urllib3_elsewhere(tls_server: FileServer) -> None:
    with HttpSession(options(verify=False)) as session:
        HttpSource(session, tls_server.url(DISK))
    with urllib3.PoolManager(cert_reqs="CERT_NONE") as pm, pytest.warns(InsecureRequestWarning):
        pm.request("HEAD", tls_server.url(DISK), retries=False)


def test_tls_reads_concurrently(tls_server: FileServer, cert: tuple[str, str, str]) -> None:
    with HttpSession(options(thumbprint=cert[2], read_timeout=5.0)) as session:
        src = HttpSource(session, tls_server.url(DISK))
        ranges = [(i * 77_777, 50_000) for i in range(32)]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda r: src.read_at(*r), ranges))
    assert got == [DATA[o : o + n] for o, n in ranges]


# -- locations -------------------------------------------------------------------------------

BASE = "https://vc.example/folder/vm%20one/vm%20one.vmdk?dcPath=Data%20Center&dsName=ds%201"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vm one-flat.vmdk", "/folder/vm%20one/vm%20one-flat.vmdk"),
        ("vm one-000001.vmdk", "/folder/vm%20one/vm%20one-000001.vmdk"),
        ("a#b?c%d.vmdk", "/folder/vm%20one/a%23b%3Fc%25d.vmdk"),
        ("/vmfs/volumes/5f1e-uuid/other vm/base.vmdk", "/folder/vm%20one/base.vmdk"),
        ("sub/x.vmdk", "/folder/vm%20one/sub/x.vmdk"),
        ("../other/x.vmdk", "/folder/other/x.vmdk"),
        ("../../../x.vmdk", "/folder/x.vmdk"),
    ],
)
def test_sibling_urls(session: HttpSession, name: str, expected: str) -> None:
    sib = HttpLocation(session, BASE).sibling(name)
    assert sib.url == f"https://vc.example{expected}?dcPath=Data%20Center&dsName=ds%201"
    assert sib.name == sib.url
    assert sib.session is session


def test_sibling_keeps_credentials_out_of_its_name(session: HttpSession) -> None:
    loc = HttpLocation(session, BASE.replace("://", "://root:pw@"))
    sib = loc.sibling("x.vmdk")
    assert sib.url.startswith("https://root:pw@vc.example/folder/vm%20one/x.vmdk?")
    assert "pw" not in sib.name
    assert str(sib) == sib.name


def test_sibling_opens_the_right_file_on_a_server(session: HttpSession) -> None:
    files = {DISK: DATA, "/folder/vm one/vm one.vmdk": b"# Disk DescriptorFile\n"}
    with FileServer(files) as srv:
        desc = HttpLocation(session, srv.url("/folder/vm one/vm one.vmdk"))
        with desc.open() as d:
            assert d.read_at(0, 100) == b"# Disk DescriptorFile\n"
        with desc.sibling("vm one-flat.vmdk").open() as flat:
            assert flat.size == SIZE
            assert flat.read_at(SIZE - 10, 10) == DATA[-10:]
        assert all(r.path.endswith("?dcPath=dc&dsName=ds1") for r in srv.requests)
        with pytest.raises(NotFoundError):
            desc.sibling("missing.vmdk").open()


# Names a VM file may hold (an extent, a parent hint, a .vmx's disk) that try to leave the
# datastore of the URL or change its query: each one must stay below /folder of the same
# datastore (the dsName and dcPath of BASE), as the path given here.
ESCAPES = [
    ("/etc/shadow", "/folder/vm%20one/shadow"),
    ("/vmfs/volumes/other-ds/vm/base.vmdk", "/folder/vm%20one/base.vmdk"),
    ("../../../../etc/shadow", "/folder/etc/shadow"),
    ("../../host/esx.conf", "/folder/host/esx.conf"),
    ("sub/../../../../x.vmdk", "/folder/x.vmdk"),
    ("..\\..\\..\\etc\\shadow", "/folder/etc/shadow"),
    ("C:\\Windows\\win.ini", "/folder/vm%20one/win.ini"),
    ("\\\\server\\share\\x.vmdk", "/folder/vm%20one/x.vmdk"),
    ("%2e%2e/%2e%2e/host/esx.conf", "/folder/vm%20one/%252e%252e/%252e%252e/host/esx.conf"),
    ("..%2f..%2fhost%2fesx.conf", "/folder/vm%20one/..%252f..%252fhost%252fesx.conf"),
    ("..;/..;/host/esx.conf", "/folder/vm%20one/..%3B/..%3B/host/esx.conf"),
    ("x.vmdk?dsName=other", "/folder/vm%20one/x.vmdk%3FdsName%3Dother"),
    ("?dsName=other&dcPath=dc2", "/folder/vm%20one/%3FdsName%3Dother%26dcPath%3Ddc2"),
    ("x.vmdk&dcPath=evil&dsName=other", "/folder/vm%20one/x.vmdk%26dcPath%3Devil%26dsName%3Dother"),
    ("x#/../../../host", "/folder/host"),
    ("x.vmdk#frag", "/folder/vm%20one/x.vmdk%23frag"),
    ("x\r\nHost: evil", "/folder/vm%20one/x%0D%0AHost%3A%20evil"),
]


def assert_in_datastore(url: str, expected_path: str | None = None) -> None:
    """``url`` names a file below /folder/ of BASE's server, datastore and datacenter, and
    sends exactly that path (urllib3 resolves dot segments before sending)."""
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.fragment) == ("https", "vc.example", "")
    assert parse_qs(parts.query) == {"dcPath": ["Data Center"], "dsName": ["ds 1"]}
    assert parts.query == "dcPath=Data%20Center&dsName=ds%201"
    assert parts.path.startswith("/folder/")
    assert urllib3.util.parse_url(url).path == parts.path
    segments = parts.path.split("/")[2:]
    assert all(unquote(seg) not in ("", ".", "..") for seg in segments)
    assert all(c not in parts.path for c in "?#\\;&= ")
    if expected_path is not None:
        assert parts.path == expected_path


@pytest.mark.parametrize(("name", "expected"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_sibling_stays_in_the_datastore(session: HttpSession, name: str, expected: str) -> None:
    base = HttpLocation(session, BASE)
    sib = base.sibling(name)
    assert_in_datastore(sib.url, expected)
    # and from there on, too
    for again in ("../../../../x", "/x", "..\\..\\x", "?dsName=x"):
        assert_in_datastore(sib.sibling(again).url)


@pytest.mark.parametrize(
    "path",
    [
        "/folder/../host/esx.conf",
        "/folder/%2e%2e/host/esx.conf",
        "/folder/%2E%2E/%2e/host/esx.conf",
        "/folder/..%2F..%2Fhost/esx.conf",
        "/folder/..%5C..%5Chost%5Cesx.conf",
        "/folder/vm/../../../host/esx.conf",
    ],
)
def test_location_url_is_confined_below_folder(session: HttpSession, path: str) -> None:
    """A datastore path (``[ds 1] ../host/esx.conf`` in a .vmx) made into a URL keeps out of
    the server's other trees: urllib3 would send ``/folder/../host/x`` as ``/host/x``."""
    loc = HttpLocation(session, f"https://vc.example{path}?dcPath=Data%20Center&dsName=ds%201")
    assert_in_datastore(loc.url, "/folder/host/esx.conf")
    assert loc.name == loc.url


def test_location_at_the_datastore_root(session: HttpSession) -> None:
    root = HttpLocation(session, "https://vc.example/folder?dcPath=Data%20Center&dsName=ds%201")
    assert_in_datastore(root.sibling("x.vmdk").url, "/folder/x.vmdk")
    assert_in_datastore(root.sibling("../../x.vmdk").url, "/folder/x.vmdk")


def test_sibling_refuses_nul_and_directories(session: HttpSession) -> None:
    base = HttpLocation(session, BASE)
    for name in ("x\0.vmdk", "../\0/etc/shadow", "\0"):
        with pytest.raises(ConfinementError, match="NUL") as info:
            base.sibling(name)
        assert isinstance(info.value, AccessDeniedError)
        assert info.value.source == base.name
    with pytest.raises(ConfinementError, match="NUL"):
        HttpLocation(session, BASE.replace("vm%20one.vmdk", "x%00.vmdk"))
    for name in ("", ".", "..", "sub/", "../..", "x.vmdk/.", "\\"):
        with pytest.raises(NotFoundError, match="directory"):
            base.sibling(name)


def test_no_name_reaches_outside_folder_on_a_server(session: HttpSession) -> None:
    """End to end: the server holds files outside /folder and in another datastore's query;
    no escaping name reads them, and every request it sees is below /folder with the same
    query."""
    files = {
        "/folder/vm one/vm one.vmdk": b"# Disk DescriptorFile\n",
        "/host/esx.conf": b"secret host configuration",
        "/etc/shadow": b"root:secret",
        "/shadow": b"root:secret",
    }
    with FileServer(files) as srv:
        # as vsphere/datastore.py builds it from "[ds1] vm one/../../host/esx.conf"
        bad = srv.url("/folder/vm one/../../host/esx.conf")
        with pytest.raises(NotFoundError):
            HttpLocation(session, bad).open()
        desc = HttpLocation(session, srv.url("/folder/vm one/vm one.vmdk"))
        for name, _ in ESCAPES:
            with pytest.raises(NotFoundError):
                desc.sibling(name).open()
        assert len(srv.requests) == 1 + len(ESCAPES)
        for r in srv.requests:
            assert r.path.startswith("/folder/"), r.path
            assert r.path.endswith("?dcPath=dc&dsName=ds1"), r.path
            assert r.path.count("?") == 1


def test_closed_session_refuses_reads(server: FileServer) -> None:
    session = HttpSession(options())
    src = HttpSource(session, server.url(DISK))
    session.close()
    with pytest.raises(ReadError, match="closed"):
        src.read_at(0, 1)


def test_many_threads_share_a_small_pool(server: FileServer) -> None:
    with HttpSession(options(pool_size=2, read_timeout=5.0)) as session:
        src = open_disk(server, session)
        errors: list[BaseException] = []

        def worker(k: int) -> None:
            try:
                for j in range(10):
                    off = (k * 10 + j) * 3001
                    assert src.read_at(off, 3001) == DATA[off : off + 3001]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert server.connections <= 2


def test_expired_cookie_is_renewed_a_bounded_number_of_times(server: FileServer) -> None:
    """A 401 (an expired vSphere session) asks for a fresh cookie and tries again: a few times
    (sessions can end one after another), then the refusal stands."""
    renewed: list[str] = []

    def renew() -> str:
        renewed.append("x")
        return 'vmware_soap_session="fresh-cookie"'

    with HttpSession(options(cookie=COOKIE), renew_cookie=renew) as session:
        src = open_disk(server, session)
        server.faults = Faults(status=401, status_first=1)
        assert src.read_at(0, 100) == DATA[:100]
        assert renewed == ["x"]
        cookies = [r.headers.get("Cookie") for r in server.requests]
        assert cookies == [COOKIE, 'vmware_soap_session="fresh-cookie"']
        server.faults = Faults(status=401, status_first=ALWAYS)
        with pytest.raises(AccessDeniedError):
            src.read_at(100, 100)
        assert len(renewed) == 1 + RENEWALS  # a bounded number per read, then the refusal stands
