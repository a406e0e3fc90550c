"""Executor inputs: the URL guard's address table, pinned and re-checked fetches, names, limits and checksums.

DNS is answered by a fake resolver (`url_guard.resolve_host`) where a test needs host names; literal IPs and
"localhost" resolve without a network. HTTP goes to an `httpx.MockTransport`, which sees exactly the requests the
fetcher sends (so the tests can check which address each request was pinned to).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gpu_executor.io import url_guard
from gpu_executor.io.inputs import InputSpec, materialize_inputs
from gpu_executor.io.url_guard import AddressKind, classify_address, resolve_and_check
from service_runtime.errors import Reason, ServiceError

pytestmark = pytest.mark.unit

FAKE_DNS = {
    "public.example": ["93.184.216.34"],
    "other.example": ["198.51.100.200", "93.184.216.35"],  # 198.51.100/24 is documentation space: refused
    "cdn.example": ["2606:4700::6810:84e5", "93.184.216.36"],
    "internal.example": ["10.0.0.7"],
    "rebind.example": ["93.184.216.34", "127.0.0.1"],  # one bad answer refuses the host
    "metadata.example": ["169.254.169.254"],
    "mapped.example": ["::ffff:192.168.0.1"],
}


_system_resolver = url_guard.resolve_host


def fake_resolver(host: str, port: int) -> list[str]:
    """Invented names from FAKE_DNS; literal addresses (in any inet_aton spelling) and localhost as the system does."""
    if host in FAKE_DNS:
        return FAKE_DNS[host]
    if host.endswith(".example"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _system_resolver(host, port)


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(url_guard, "resolve_host", fake_resolver)


# -- the address table ---------------------------------------------------------------------------------------

ADDRESS_KINDS = [
    ("8.8.8.8", AddressKind.PUBLIC),
    ("93.184.216.34", AddressKind.PUBLIC),
    ("2606:4700:4700::1111", AddressKind.PUBLIC),
    ("::ffff:8.8.8.8", AddressKind.PUBLIC),
    ("64:ff9b::808:808", AddressKind.PUBLIC),  # NAT64 of a public address
    ("0.0.0.0", AddressKind.UNSPECIFIED),
    ("0.1.2.3", AddressKind.UNSPECIFIED),  # "this network" 0/8
    ("::", AddressKind.UNSPECIFIED),
    ("127.0.0.1", AddressKind.LOOPBACK),
    ("127.255.0.9", AddressKind.LOOPBACK),
    ("::1", AddressKind.LOOPBACK),
    ("::ffff:127.0.0.1", AddressKind.LOOPBACK),
    ("64:ff9b::7f00:1", AddressKind.LOOPBACK),  # NAT64 of 127.0.0.1
    ("2002:7f00:1::", AddressKind.LOOPBACK),  # 6to4 of 127.0.0.1
    ("10.1.2.3", AddressKind.PRIVATE),
    ("172.16.0.1", AddressKind.PRIVATE),
    ("192.168.1.1", AddressKind.PRIVATE),
    ("::ffff:10.0.0.1", AddressKind.PRIVATE),
    ("fc00::1", AddressKind.PRIVATE),
    ("fd12:3456::1", AddressKind.PRIVATE),
    ("169.254.1.1", AddressKind.LINK_LOCAL),
    ("fe80::1", AddressKind.LINK_LOCAL),
    ("169.254.169.254", AddressKind.METADATA),
    ("::ffff:169.254.169.254", AddressKind.METADATA),
    ("fd00:ec2::254", AddressKind.METADATA),
    ("100.64.0.1", AddressKind.SHARED),
    ("100.127.255.254", AddressKind.SHARED),
    ("224.0.0.1", AddressKind.MULTICAST),
    ("239.255.255.250", AddressKind.MULTICAST),
    ("ff02::1", AddressKind.MULTICAST),
    ("255.255.255.255", AddressKind.BROADCAST),
    ("240.0.0.1", AddressKind.RESERVED),
    ("::7f00:1", AddressKind.RESERVED),  # deprecated IPv4-compatible form
]


@pytest.mark.parametrize(("address", "kind"), ADDRESS_KINDS)
def test_address_kinds(address: str, kind: AddressKind) -> None:
    assert classify_address(ipaddress.ip_address(address)) == kind


REFUSED_ALWAYS = [
    "http://0.0.0.0/", "http://[::]/", "http://169.254.169.254/latest/meta-data/", "http://metadata.example/",
    "http://[::ffff:169.254.169.254]/", "http://224.0.0.1/", "http://[ff02::1]/", "http://255.255.255.255/",
    "http://240.0.0.1/",
]
REFUSED_UNLESS_PRIVATE = [
    "http://127.0.0.1/", "http://127.1/", "http://2130706433/", "http://0x7f.1/", "http://localhost:8080/x", "http://[::1]/",
    "http://10.0.0.1/", "http://172.16.5.4/", "http://192.168.1.1/", "http://100.64.0.1/", "http://[fc00::1]/",
    "http://[fe80::1]/", "http://169.254.1.1/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/",
    "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/", "http://internal.example/", "http://rebind.example/",
    "http://mapped.example/", "http://other.example/",
]
ALLOWED = [
    "http://8.8.8.8/", "https://1.1.1.1:8443/x?y=1", "https://[2606:4700:4700::1111]/", "http://[::ffff:8.8.8.8]/",
    "http://[64:ff9b::808:808]/", "https://public.example/a.png", "https://cdn.example/",
]


def assert_url_not_allowed(error: ServiceError, field: str = "url") -> None:
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == Reason.URL_NOT_ALLOWED
    assert [v.field for v in error.field_violations] == [field]


@pytest.mark.parametrize("url", REFUSED_ALWAYS + REFUSED_UNLESS_PRIVATE)
async def test_non_public_addresses_are_refused(url: str) -> None:
    with pytest.raises(ServiceError) as caught:
        await resolve_and_check(url, allow_private=False)
    assert_url_not_allowed(caught.value)
    assert caught.value.field_violations[0].reason == "ADDRESS_NOT_ALLOWED"
    assert caught.value.metadata["address_kind"] != AddressKind.PUBLIC


@pytest.mark.parametrize("url", REFUSED_ALWAYS)
async def test_allow_private_never_opens_metadata_unspecified_multicast_or_reserved(url: str) -> None:
    with pytest.raises(ServiceError) as caught:
        await resolve_and_check(url, allow_private=True)
    assert_url_not_allowed(caught.value)


@pytest.mark.parametrize("url", [u for u in REFUSED_UNLESS_PRIVATE if "other.example" not in u])
async def test_allow_private_opens_private_addresses(url: str) -> None:
    assert await resolve_and_check(url, allow_private=True)


@pytest.mark.parametrize("url", ALLOWED)
async def test_public_addresses_are_allowed(url: str) -> None:
    addresses = await resolve_and_check(url, allow_private=False)
    assert addresses and all(classify_address(a) == AddressKind.PUBLIC for a in addresses)


async def test_every_address_of_a_host_is_returned_once() -> None:
    assert await resolve_and_check("https://cdn.example/x", allow_private=False) == [
        ipaddress.ip_address("2606:4700::6810:84e5"), ipaddress.ip_address("93.184.216.36")]


@pytest.mark.parametrize(("url", "sub_reason"), [
    ("ftp://8.8.8.8/file", "SCHEME_NOT_ALLOWED"),
    ("file:///etc/passwd", "SCHEME_NOT_ALLOWED"),
    ("gopher://8.8.8.8:70/", "SCHEME_NOT_ALLOWED"),
    ("javascript:alert(1)", "SCHEME_NOT_ALLOWED"),
    ("/relative/path", "SCHEME_NOT_ALLOWED"),
    ("http:///no-host", "HOST_MISSING"),
    ("https://:443/", "HOST_MISSING"),
    ("http://[::1/", "URL_MALFORMED"),
    ("http://8.8.8.8/" + "a" * 9000, "URL_TOO_LONG"),
])
async def test_scheme_and_host_are_required(url: str, sub_reason: str) -> None:
    with pytest.raises(ServiceError) as caught:
        await resolve_and_check(url, allow_private=True, field="inputs[2].url")
    assert_url_not_allowed(caught.value, "inputs[2].url")
    assert caught.value.field_violations[0].reason == sub_reason


async def test_unresolvable_host_is_a_fetch_failure() -> None:
    with pytest.raises(ServiceError) as caught:
        await resolve_and_check("https://nx.example/", allow_private=False)
    assert caught.value.reason == Reason.URL_FETCH_FAILED
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_query_and_credentials_stay_out_of_errors() -> None:
    with pytest.raises(ServiceError) as caught:
        await resolve_and_check("http://user:secret@127.0.0.1/x?X-Amz-Signature=abc", allow_private=False)
    assert caught.value.metadata["url"] == "http://127.0.0.1/x"
    assert "secret" not in str(caught.value) + repr(caught.value.metadata)


# -- fetching: pinned connections and redirects ------------------------------------------------------------


def mock_client(handler: Callable[[httpx.Request], Any]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def fetch(tmp_path: Path, url: str, handler: Callable[[httpx.Request], Any], *, sha256: str = "",
                max_url_bytes: int = 1 << 20, url_timeout: float = 5.0,
                allow_private_urls: bool = False) -> dict[str, Path]:
    async with mock_client(handler) as client:
        return await materialize_inputs([InputSpec("in.bin", url=url, sha256=sha256)], tmp_path / "inputs",
                                        store=None, inputs_bucket="inputs", max_inline_bytes=1024,
                                        max_url_bytes=max_url_bytes, url_timeout=url_timeout,
                                        allow_private_urls=allow_private_urls, http_client=client)


def leftovers(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "inputs").rglob("*") if p.is_file())


async def test_fetch_connects_to_the_vetted_address_with_the_original_host_and_sni(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    body = b"image bytes" * 100

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    paths = await fetch(tmp_path, "https://public.example:8443/img.png?sig=1", handler,
                        sha256=hashlib.sha256(body).hexdigest())
    assert paths["in.bin"].read_bytes() == body
    [request] = seen
    assert (request.url.host, request.url.port, request.url.path, request.url.query) == (
        "93.184.216.34", 8443, "/img.png", b"sig=1")
    assert request.headers["host"] == "public.example:8443"
    assert request.extensions["sni_hostname"] == "public.example"


async def test_dns_is_asked_once_per_hop_so_a_rebinding_answer_is_never_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # a rebinding server: public first, loopback after
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    monkeypatch.setattr(url_guard, "resolve_host", rebinding)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(200, content=b"ok")

    await fetch(tmp_path, "http://rebinding.example/x", handler)
    assert calls == ["rebinding.example"] and seen == ["93.184.216.34"]


@pytest.mark.parametrize("location", [
    "http://internal.example/secret", "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/",
    "http://[::ffff:127.0.0.1]/", "http://metadata.example/",
])
async def test_redirect_to_a_private_address_is_refused(tmp_path: Path, location: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": location})

    with pytest.raises(ServiceError) as caught:
        await fetch(tmp_path, "https://public.example/start", handler)
    assert_url_not_allowed(caught.value, "inputs[0].url")
    assert caught.value.metadata["redirected_from"] == "https://public.example/start"
    assert caught.value.metadata["input"] == "in.bin"
    assert seen == ["https://93.184.216.34/start"]  # the private target was never contacted
    assert leftovers(tmp_path) == []


async def test_redirect_to_another_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await fetch(tmp_path, "https://public.example/", lambda _: httpx.Response(301, headers={
            "Location": "file:///etc/passwd"}))
    assert_url_not_allowed(caught.value, "inputs[0].url")


async def test_each_redirect_hop_is_checked_and_pinned_again(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["host"]))
        if request.headers["host"] == "public.example":
            return httpx.Response(307, headers={"Location": "https://cdn.example/final.png"})
        if request.url.path == "/final.png":
            return httpx.Response(303, headers={"Location": "/moved.png"})  # relative: same host
        return httpx.Response(200, content=b"final")

    paths = await fetch(tmp_path, "http://public.example/a.png", handler)
    assert paths["in.bin"].read_bytes() == b"final"
    assert seen == [
        ("http://93.184.216.34/a.png", "public.example"),
        ("https://[2606:4700::6810:84e5]/final.png", "cdn.example"),
        ("https://[2606:4700::6810:84e5]/moved.png", "cdn.example"),
    ]


async def test_redirect_loops_stop(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await fetch(tmp_path, "http://public.example/loop", lambda _: httpx.Response(302, headers={
            "Location": "/loop"}))
    assert caught.value.reason == Reason.URL_FETCH_FAILED
    assert "redirects" in caught.value.message


async def test_private_url_refused_before_any_request(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with pytest.raises(ServiceError) as caught:
        await fetch(tmp_path, "http://localhost:9/x", handler)
    assert_url_not_allowed(caught.value, "inputs[0].url")
    assert seen == []


@pytest.mark.parametrize(("status", "code"), [
    (404, grpc.StatusCode.INVALID_ARGUMENT), (403, grpc.StatusCode.INVALID_ARGUMENT),
    (503, grpc.StatusCode.UNAVAILABLE), (429, grpc.StatusCode.UNAVAILABLE),
])
async def test_http_errors_are_fetch_failures_with_the_status(tmp_path: Path, status: int,
                                                              code: grpc.StatusCode) -> None:
    with pytest.raises(ServiceError) as caught:
        await fetch(tmp_path, "https://public.example/x", lambda _: httpx.Response(status, content=b"nope"))
    assert (caught.value.reason, caught.value.code) == (Reason.URL_FETCH_FAILED, code)
    assert caught.value.metadata["status"] == str(status)
    assert caught.value.metadata["input"] == "in.bin"


async def test_declared_length_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await fetch(tmp_path, "https://public.example/x", lambda _: httpx.Response(200, content=b"x" * 101),
                    max_url_bytes=100)
    assert caught.value.reason == Reason.URL_FETCH_FAILED
    assert caught.value.metadata["content_length"] == "101"
    assert leftovers(tmp_path) == []


async def test_stream_over_the_limit_is_aborted(tmp_path: Path) -> None:
    produced: list[int] = []

    async def endless() -> Any:
        for _ in range(10_000):
            produced.append(1)
            yield b"y" * 1000

    with pytest.raises(ServiceError) as caught:
        await fetch(tmp_path, "https://public.example/x", lambda _: httpx.Response(200, content=endless()),
                    max_url_bytes=5000)
    assert caught.value.reason == Reason.URL_FETCH_FAILED
    assert caught.value.metadata["limit_bytes"] == "5000"
    assert len(produced) <= 7  # stopped as soon as the limit was passed
    assert leftovers(tmp_path) == []


async def test_exactly_the_limit_is_fine(tmp_path: Path) -> None:
    paths = await fetch(tmp_path, "https://public.example/x", lambda _: httpx.Response(200, content=b"z" * 100),
                        max_url_bytes=100)
    assert paths["in.bin"].stat().st_size == 100


async def test_slow_remote_times_out(tmp_path: Path) -> None:
    async def slow(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    with pytest.raises(ServiceError) as caught:
        await fetch(tmp_path, "https://public.example/x", slow, url_timeout=0.2)
    assert (caught.value.reason, caught.value.code) == (Reason.URL_FETCH_FAILED, grpc.StatusCode.UNAVAILABLE)
    assert caught.value.metadata["timeout_seconds"] == "0.2"


async def test_url_sha256_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await fetch(tmp_path, "https://public.example/x", lambda _: httpx.Response(200, content=b"tampered"),
                    sha256=hashlib.sha256(b"original").hexdigest())
    assert caught.value.reason == Reason.INPUT_INVALID
    assert caught.value.metadata["actual_sha256"] == hashlib.sha256(b"tampered").hexdigest()
    assert leftovers(tmp_path) == []


# -- names, inline data, checksums ---------------------------------------------------------------------------


async def materialize(tmp_path: Path, inputs: list[InputSpec], *, max_inline_bytes: int = 1024) -> dict[str, Path]:
    return await materialize_inputs(inputs, tmp_path / "inputs", store=None, inputs_bucket="inputs",
                                    max_inline_bytes=max_inline_bytes, max_url_bytes=1024, url_timeout=1.0,
                                    allow_private_urls=False)


async def test_inline_inputs_are_written(tmp_path: Path) -> None:
    data = b"\x89PNG\r\n" + bytes(range(256))
    paths = await materialize(tmp_path, [
        InputSpec("a.png", data=data, sha256=hashlib.sha256(data).hexdigest().upper()),
        InputSpec("sub/dir/b.txt", data=b"b"),
        InputSpec("./c.txt", data=b""),
    ])
    root = (tmp_path / "inputs").resolve()
    assert paths == {"a.png": root / "a.png", "sub/dir/b.txt": root / "sub" / "dir" / "b.txt",
                     "./c.txt": root / "c.txt"}
    assert paths["a.png"].read_bytes() == data and paths["./c.txt"].read_bytes() == b""
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["a.png", "b.txt", "c.txt"]  # no temp files


@pytest.mark.parametrize(("names", "sub_reason"), [
    (["../escape.png"], "NAME_ESCAPES"),
    (["a/../../escape.png"], "NAME_ESCAPES"),
    (["sub/../../../etc/passwd"], "NAME_ESCAPES"),
    (["/etc/passwd"], "NAME_ABSOLUTE"),
    (["//host/share"], "NAME_ABSOLUTE"),
    ([""], "NAME_EMPTY"),
    (["   "], "NAME_EMPTY"),
    (["."], "NAME_EMPTY"),
    (["./"], "NAME_EMPTY"),
    (["a\\..\\b"], "NAME_CHARACTERS"),
    (["a\x00b"], "NAME_CHARACTERS"),
    (["line\nbreak"], "NAME_CHARACTERS"),
    (["x" * 300], "NAME_TOO_LONG"),
    (["a.png", "a.png"], "NAME_DUPLICATE"),
    (["a.png", "./a.png"], "NAME_DUPLICATE"),
    (["d/a.png", "d//a.png"], "NAME_DUPLICATE"),
    (["a", "a/b.png"], "NAME_CONFLICT"),
])
async def test_bad_names_are_refused_before_anything_is_written(tmp_path: Path, names: list[str],
                                                                  sub_reason: str) -> None:
    inputs = [InputSpec("ok.png", data=b"ok")] + [InputSpec(name, data=b"x") for name in names]
    with pytest.raises(ServiceError) as caught:
        await materialize(tmp_path, inputs)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.INPUT_INVALID)
    assert error.field_violations[0].reason == sub_reason
    assert error.field_violations[0].field.endswith(".name")
    assert "input" in error.metadata
    assert not (tmp_path / "inputs").exists()
    assert not (tmp_path / "escape.png").exists()


async def test_a_symlink_inside_the_target_cannot_lead_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "link").symlink_to(outside)
    with pytest.raises(ServiceError) as caught:
        await materialize(tmp_path, [InputSpec("link/deeper/x.png", data=b"x")])
    assert caught.value.field_violations[0].reason == "NAME_ESCAPES"
    assert list(outside.iterdir()) == []


async def test_inline_size_limit(tmp_path: Path) -> None:
    assert (await materialize(tmp_path, [InputSpec("fits.bin", data=b"x" * 16)], max_inline_bytes=16))
    with pytest.raises(ServiceError) as caught:
        await materialize(tmp_path, [InputSpec("big.bin", data=b"x" * 17)], max_inline_bytes=16)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.INPUT_INVALID)
    assert error.metadata == {"input": "big.bin", "input_index": "0", "size_bytes": "17", "limit_bytes": "16"}
    assert error.field_violations[0].field == "inputs[0].data"
    assert not (tmp_path / "inputs" / "big.bin").exists()


async def test_sha256_mismatch_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await materialize(tmp_path, [InputSpec("a.bin", data=b"actual", sha256=hashlib.sha256(b"other").hexdigest())])
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.INPUT_INVALID)
    assert error.field_violations[0].reason == "SHA256_MISMATCH"
    assert error.metadata["expected_sha256"] == hashlib.sha256(b"other").hexdigest()
    assert error.metadata["actual_sha256"] == hashlib.sha256(b"actual").hexdigest()
    assert list((tmp_path / "inputs").iterdir()) == []


async def test_malformed_sha256_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await materialize(tmp_path, [InputSpec("a.bin", data=b"x", sha256="abc")])
    assert caught.value.field_violations[0].reason == "SHA256_MALFORMED"


@pytest.mark.parametrize("spec", [
    InputSpec("none.bin"),
    InputSpec("two.bin", data=b"x", url="https://public.example/"),
])
async def test_exactly_one_source(tmp_path: Path, spec: InputSpec) -> None:
    with pytest.raises(ServiceError) as caught:
        await materialize(tmp_path, [spec])
    assert caught.value.field_violations[0].reason == "SOURCE_MISSING"


async def test_object_key_without_a_store_is_a_precondition_failure(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await materialize(tmp_path, [InputSpec("a.png", object_key="uploads/a.png")])
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.metadata["input"] == "a.png"


async def test_a_failure_removes_the_inputs_already_written(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        await materialize(tmp_path, [InputSpec("first.png", data=b"ok"),
                                     InputSpec("second.png", data=b"x", sha256="0" * 64)])
    assert caught.value.metadata["input"] == "second.png"
    assert caught.value.metadata["input_index"] == "1"
    assert list((tmp_path / "inputs").iterdir()) == []


def test_from_message_reads_the_oneof() -> None:
    class Message:
        name, data, object_key, url, content_type, sha256 = "a.png", b"", "uploads/a.png", "", "image/png", ""

        def WhichOneof(self, group: str) -> str | None:
            assert group == "source"
            return "object_key"

    assert InputSpec.from_message(Message()) == InputSpec("a.png", object_key="uploads/a.png",
                                                          content_type="image/png")
