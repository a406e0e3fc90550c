"""AIP-158 page tokens: opaque, bound to their query, tamper-evident, expiring."""

from __future__ import annotations

import pytest

from service_runtime.errors import Reason, ServiceError
from service_runtime.pagination import PageSize, PageTokenCodec

pytestmark = pytest.mark.unit


def test_page_size_rules() -> None:
    size = PageSize(default=50, maximum=1000)
    assert (size.resolve(0), size.resolve(7), size.resolve(5000)) == (50, 7, 1000)
    with pytest.raises(ServiceError):
        size.resolve(-1)


def test_token_round_trip_and_first_page() -> None:
    codec = PageTokenCodec(b"k")
    token = codec.encode({"before": "abc"}, {"q": 1})
    assert codec.decode(token, {"q": 1}) == {"before": "abc"}
    assert codec.decode("", {"q": 1}) is None
    assert "abc" not in token  # opaque enough not to be edited by hand


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1],
    lambda t: "garbage!!",
    lambda t: t + "x",
])
def test_tampered_tokens_are_rejected(mutate) -> None:
    codec = PageTokenCodec(b"k")
    token = codec.encode({"before": "abc"}, {"q": 1})
    with pytest.raises(ServiceError) as caught:
        codec.decode(mutate(token), {"q": 1})
    assert caught.value.reason == Reason.INVALID_PAGE_TOKEN


def test_token_for_another_query_or_secret_or_too_old_is_rejected() -> None:
    codec = PageTokenCodec(b"k")
    token = codec.encode({"before": "abc"}, {"q": 1})
    for decoder, query in ((codec, {"q": 2}), (PageTokenCodec(b"other"), {"q": 1}),
                           (PageTokenCodec(b"k", max_age_seconds=-1), {"q": 1})):
        with pytest.raises(ServiceError):
            decoder.decode(token, query)
