"""ClientConfig: argument, then environment, then default; a value object that hides the key."""

from __future__ import annotations

import pytest

from atoll import ClientConfig, InvalidArgument


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ClientConfig(api_key="k")
    assert config.api_key == "k"
    assert config.base_url == "http://127.0.0.1:7700"
    assert config.sandbox_domain == "sbx.localhost:7701"
    assert config.sandbox_scheme == "https"
    assert config.timeout == 300.0


def test_environment_fills_what_the_arguments_leave_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOLL_API_KEY", " env-key ")
    monkeypatch.setenv("ATOLL_BASE_URL", "https://atoll.example/api/")
    monkeypatch.setenv("ATOLL_SANDBOX_DOMAIN", "sbx.example")
    monkeypatch.setenv("ATOLL_SANDBOX_SCHEME", "HTTP")
    config = ClientConfig()
    assert config.api_key == "env-key"
    assert config.base_url == "https://atoll.example/api"
    assert config.sandbox_domain == "sbx.example"
    assert config.sandbox_scheme == "http"

    explicit = ClientConfig(
        api_key="arg", base_url="http://h:1", sandbox_domain="d.test/", sandbox_scheme="https"
    )
    assert (explicit.api_key, explicit.base_url, explicit.sandbox_domain, explicit.sandbox_scheme) == (
        "arg",
        "http://h:1",
        "d.test",
        "https",
    )
    # An empty or blank argument counts as not given.
    assert ClientConfig(api_key="  ", sandbox_domain="").api_key == "env-key"


def test_the_key_is_required() -> None:
    with pytest.raises(InvalidArgument, match="ATOLL_API_KEY") as caught:
        ClientConfig()
    assert caught.value.field == "api_key"


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), True, "30"])
def test_timeout_must_be_positive_and_finite(timeout: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ClientConfig(api_key="k", timeout=timeout)  # type: ignore[arg-type]
    assert caught.value.field == "timeout"


def test_timeout_is_normalised_to_float() -> None:
    assert ClientConfig(api_key="k", timeout=5).timeout == 5.0


@pytest.mark.parametrize(("field", "value"), [("sandbox_scheme", "ftp"), ("base_url", "api.example")])
def test_bad_scheme_and_url(field: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ClientConfig(api_key="k", **{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        ClientConfig("k")  # type: ignore[call-arg]


def test_value_semantics_and_masked_repr() -> None:
    a = ClientConfig(api_key="sk-secret-123", timeout=10)
    b = ClientConfig(api_key="sk-secret-123", timeout=10.0)
    assert a == b
    assert hash(a) == hash(b)
    assert a != ClientConfig(api_key="other", timeout=10)
    assert a != "not a config"
    assert "sk-secret" not in repr(a)
    assert repr(a) == (
        "ClientConfig(api_key='***', base_url='http://127.0.0.1:7700', sandbox_domain='sbx.localhost:7701', "
        "sandbox_scheme='https', timeout=10.0)"
    )
    with pytest.raises(AttributeError):
        a.api_key = "x"  # type: ignore[misc]
