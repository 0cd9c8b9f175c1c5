"""Settings: every `TIERSTREAM_*` variable validated at start with a message that names it,
Kafka SASL/TLS passed through to Faust's (and aiokafka's) credentials, Redis password and TLS
reaching the Redis client, and secrets kept out of reprs, error messages and the worker's
start-up errors. No broker is needed."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
import redis.asyncio as aioredis
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol, SASLMechanism

from streams import readmodel
from streams.app import aiokafka_security, create_app, faust_settings
from streams.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
SASL_PASSWORD = "kafka-Pa55-w0rd"
REDIS_PASSWORD = "redis-Pa55-w0rd"
WEB_TOKEN = "web-token-0123456789abcdef"
SECRETS = (SASL_PASSWORD, REDIS_PASSWORD, WEB_TOKEN)


def base(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "TIERSTREAM_BROKER": "kafka://127.0.0.1:1",
        "TIERSTREAM_DATA_DIR": str(tmp_path / "data"),
        **extra,
    }


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return str(info.value)


# -- certificates for the TLS settings -----------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A CA and a client certificate signed by it (openssl), as PEM files."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("openssl not found (needed to make test certificates)")
        pytest.skip("openssl not found (needed to make test certificates)")
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=tierstream-test-ca", "-keyout", "ca.key", "-out", "ca.pem",
    )  # fmt: skip
    run(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=tierstream-worker",
        "-keyout", "client.key", "-out", "client.csr",
    )  # fmt: skip
    run(
        "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "client.pem",
    )  # fmt: skip
    yield {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}


# -- defaults ------------------------------------------------------------------------------------


def test_defaults_are_safe(tmp_path: Path) -> None:
    s = load_settings(base(tmp_path))
    assert s.web_host == "127.0.0.1" and s.web_port == 6066 and not s.web_exposed
    assert not s.web_token
    assert s.kafka_security_protocol == "PLAINTEXT" and s.kafka_sasl_mechanism is None
    assert s.redis_url == "redis://127.0.0.1:6379/0" and not s.redis_tls
    assert s.partitions == 8 and s.store == "memory" and s.lag_interval_seconds == 5.0
    assert s.gc_threshold == 50_000
    assert load_settings(base(tmp_path, TIERSTREAM_GC_THRESHOLD="0")).gc_threshold == 0
    assert s.warnings == ()
    conf = faust_settings(s)
    assert conf["web_bind"] == "127.0.0.1"
    assert "broker_credentials" not in conf


def test_web_host_is_what_faust_binds(tmp_path: Path) -> None:
    s = load_settings(base(tmp_path, TIERSTREAM_WEB_HOST="0.0.0.0", TIERSTREAM_WEB_TOKEN=WEB_TOKEN))
    assert faust_settings(s)["web_bind"] == "0.0.0.0" and s.web_exposed
    assert s.warnings == ()


def test_exposed_web_without_token_is_warned_about(tmp_path: Path) -> None:
    s = load_settings(base(tmp_path, TIERSTREAM_WEB_HOST="0.0.0.0"))
    assert any("TIERSTREAM_WEB_TOKEN" in w and "0.0.0.0" in w for w in s.warnings)


def test_a_misspelt_variable_is_named_with_a_suggestion(tmp_path: Path) -> None:
    s = load_settings(base(tmp_path, TIERSTREAM_WEB_TOKN="x" * 20))
    assert s.warnings == (
        "unknown setting TIERSTREAM_WEB_TOKN is ignored (did you mean TIERSTREAM_WEB_TOKEN?)",
    )
    assert "x" * 20 not in repr(s)


def test_values_are_normalised(tmp_path: Path) -> None:
    s = load_settings(
        base(
            tmp_path,
            TIERSTREAM_BROKER="a:9092,kafka://b:9093",
            TIERSTREAM_KAFKA_SECURITY_PROTOCOL="sasl_ssl",
            TIERSTREAM_KAFKA_SASL_MECHANISM="scram-sha-512",
            TIERSTREAM_KAFKA_SASL_USERNAME="svc",
            TIERSTREAM_KAFKA_SASL_PASSWORD=SASL_PASSWORD,
            TIERSTREAM_LOG_LEVEL="WARNING",
            TIERSTREAM_STORE="RocksDB",
            TIERSTREAM_EVENT_LOOP=" UVLoop ",
            TIERSTREAM_LIVE_CLOCK=" Off ",
            TIERSTREAM_WEB_PORT=" 8080 ",
        )
    )
    assert s.broker == "kafka://a:9092;kafka://b:9093"
    assert s.kafka_security_protocol == "SASL_SSL" and s.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert (s.log_level, s.store, s.live_clock, s.web_port) == ("warning", "rocksdb", False, 8080)
    assert s.event_loop == "uvloop"


# -- every variable validated with a message that names it ---------------------------------------

BAD_VALUES: list[tuple[str, str]] = [
    ("TIERSTREAM_WEB_PORT", "http"),
    ("TIERSTREAM_WEB_PORT", "0"),
    ("TIERSTREAM_WEB_PORT", "65536"),
    ("TIERSTREAM_PARTITIONS", "four"),
    ("TIERSTREAM_PARTITIONS", "0"),
    ("TIERSTREAM_PARTITIONS", "4.5"),
    ("TIERSTREAM_MAX_FUTURE_SECONDS", "-1"),
    ("TIERSTREAM_TICK_SECONDS", "fast"),
    ("TIERSTREAM_TICK_SECONDS", "0"),
    ("TIERSTREAM_TICK_SECONDS", "nan"),
    ("TIERSTREAM_HOLDOUT_SHARE", "1.5"),
    ("TIERSTREAM_HOLDOUT_SHARE", "10%"),
    ("TIERSTREAM_LAG_INTERVAL_SECONDS", "0"),
    ("TIERSTREAM_LAG_INTERVAL_SECONDS", "inf"),
    ("TIERSTREAM_FETCH_MAX_WAIT_MS", "0"),
    ("TIERSTREAM_FETCH_MAX_WAIT_MS", "0.5s"),
    ("TIERSTREAM_GC_THRESHOLD", "-1"),
    ("TIERSTREAM_GC_THRESHOLD", "50"),
    ("TIERSTREAM_GC_THRESHOLD", "lots"),
    ("TIERSTREAM_LIVE_CLOCK", "maybe"),
    ("TIERSTREAM_REDIS_TLS", "sure"),
    ("TIERSTREAM_FAST_GROUP_JOIN", "2"),
    ("TIERSTREAM_CAMPAIGNS_ON_BACKFILL", "y"),
    ("TIERSTREAM_BROKER", "localhost"),
    ("TIERSTREAM_BROKER", "http://broker:9092"),
    ("TIERSTREAM_BROKER", "kafka://:9092"),
    ("TIERSTREAM_BROKER", "kafka://broker:port"),
    ("TIERSTREAM_BROKER", "kafka://broker:9092/path"),
    ("TIERSTREAM_REDIS_URL", "localhost:6379"),
    ("TIERSTREAM_REDIS_URL", "http://redis:6379/0"),
    ("TIERSTREAM_REDIS_URL", "redis://:6379/0"),
    ("TIERSTREAM_REDIS_URL", "redis://redis:port/0"),
    ("TIERSTREAM_REDIS_URL", "redis://redis:6379/db1"),
    ("TIERSTREAM_REDIS_URL", "unix://"),
    ("TIERSTREAM_RULES", "/nonexistent/rules.toml"),
    ("TIERSTREAM_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem"),
    ("TIERSTREAM_REDIS_CA_FILE", "/nonexistent/ca.pem"),
    ("TIERSTREAM_DEFAULT_TIMEZONE", "Mars/Olympus_Mons"),
    ("TIERSTREAM_DEFAULT_TIMEZONE", "UTC+8"),
    ("TIERSTREAM_BASE_CURRENCY", "dollars"),
    ("TIERSTREAM_APP_ID", "my app"),
    ("TIERSTREAM_STORE", "postgres"),
    ("TIERSTREAM_EVENT_LOOP", "trio"),
    ("TIERSTREAM_LOG_LEVEL", "verbose"),
    ("TIERSTREAM_KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("TIERSTREAM_KAFKA_SASL_MECHANISM", "GSSAPI"),
    ("TIERSTREAM_WEB_HOST", "not a host"),
    ("TIERSTREAM_WEB_HOST", "300.1.1.1"),
    ("TIERSTREAM_WEB_TOKEN", "s3cr3t"),
    ("TIERSTREAM_WEB_TOKEN", "has a space in it 0123456789"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[f"{n}={v}" for n, v in BAD_VALUES])
def test_a_bad_value_is_refused_naming_the_variable(tmp_path: Path, name: str, value: str) -> None:
    env = base(tmp_path, **{name: value})
    if name == "TIERSTREAM_KAFKA_SASL_MECHANISM":
        env.update(
            TIERSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            TIERSTREAM_KAFKA_SASL_USERNAME="svc",
            TIERSTREAM_KAFKA_SASL_PASSWORD=SASL_PASSWORD,
        )
    if name == "TIERSTREAM_KAFKA_SSL_CAFILE":
        env["TIERSTREAM_KAFKA_SECURITY_PROTOCOL"] = "SSL"
    message = config_error(env)
    assert name in message
    if name == "TIERSTREAM_WEB_TOKEN":
        assert value not in message  # a token, even a bad one, is a secret


def test_rules_must_be_toml_or_yaml(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text("{}")
    assert "TIERSTREAM_RULES" in config_error(base(tmp_path, TIERSTREAM_RULES=str(rules)))


def test_data_dir_must_be_a_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    env = base(tmp_path, TIERSTREAM_DATA_DIR=str(not_a_dir))
    assert "TIERSTREAM_DATA_DIR" in config_error(env)


SASL_COMBOS: list[tuple[dict[str, str], tuple[str, ...]]] = [
    # SASL without what it needs: the message lists what is missing.
    (
        {"TIERSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
        (
            "TIERSTREAM_KAFKA_SASL_MECHANISM",
            "TIERSTREAM_KAFKA_SASL_USERNAME",
            "TIERSTREAM_KAFKA_SASL_PASSWORD",
        ),
    ),
    (
        {
            "TIERSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "TIERSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
            "TIERSTREAM_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        },
        ("TIERSTREAM_KAFKA_SASL_USERNAME",),
    ),
    (
        {
            "TIERSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "TIERSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "TIERSTREAM_KAFKA_SASL_USERNAME": "svc",
        },
        ("TIERSTREAM_KAFKA_SASL_PASSWORD",),
    ),
    # SASL settings that would be silently ignored.
    (
        {"TIERSTREAM_KAFKA_SASL_USERNAME": "svc", "TIERSTREAM_KAFKA_SASL_PASSWORD": SASL_PASSWORD},
        ("TIERSTREAM_KAFKA_SASL_USERNAME", "TIERSTREAM_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ),
    (
        {
            "TIERSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
            "TIERSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
        },
        ("TIERSTREAM_KAFKA_SASL_MECHANISM", "TIERSTREAM_KAFKA_SECURITY_PROTOCOL=SSL"),
    ),
    # A credential in the broker URL, where it would be logged.
    (
        {"TIERSTREAM_BROKER": f"kafka://svc:{SASL_PASSWORD}@broker:9092"},
        ("TIERSTREAM_BROKER", "TIERSTREAM_KAFKA_SASL_PASSWORD"),
    ),
]


@pytest.mark.parametrize(("extra", "named"), SASL_COMBOS)
def test_bad_sasl_combinations_are_refused(
    tmp_path: Path, extra: dict[str, str], named: tuple[str, ...]
) -> None:
    message = config_error(base(tmp_path, **extra))
    for name in named:
        assert name in message
    assert SASL_PASSWORD not in message


def test_tls_files_need_a_tls_protocol(tmp_path: Path, certs: dict[str, Path]) -> None:
    message = config_error(base(tmp_path, TIERSTREAM_KAFKA_SSL_CAFILE=str(certs["ca"])))
    assert "TIERSTREAM_KAFKA_SSL_CAFILE" in message and "PLAINTEXT" in message
    message = config_error(
        base(
            tmp_path,
            TIERSTREAM_KAFKA_SECURITY_PROTOCOL="SSL",
            TIERSTREAM_KAFKA_SSL_KEYFILE=str(certs["key"]),
        )
    )
    assert "TIERSTREAM_KAFKA_SSL_KEYFILE" in message and "TIERSTREAM_KAFKA_SSL_CERTFILE" in message


REDIS_COMBOS: list[tuple[dict[str, str], tuple[str, ...]]] = [
    (
        {"TIERSTREAM_REDIS_URL": "rediss://redis:6380/0", "TIERSTREAM_REDIS_TLS": "false"},
        ("TIERSTREAM_REDIS_TLS", "rediss://"),
    ),
    (
        {"TIERSTREAM_REDIS_URL": "unix:///run/redis.sock", "TIERSTREAM_REDIS_TLS": "true"},
        ("TIERSTREAM_REDIS_TLS", "unix://"),
    ),
    (
        {
            "TIERSTREAM_REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis:6379/0",
            "TIERSTREAM_REDIS_PASSWORD": "another-one",
        },
        ("TIERSTREAM_REDIS_PASSWORD", "TIERSTREAM_REDIS_URL"),
    ),
    (
        {"TIERSTREAM_REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis:99999/0"},
        ("TIERSTREAM_REDIS_URL", "redis://:***@redis:99999/0"),
    ),
]


@pytest.mark.parametrize(("extra", "named"), REDIS_COMBOS)
def test_bad_redis_combinations_are_refused(
    tmp_path: Path, extra: dict[str, str], named: tuple[str, ...]
) -> None:
    message = config_error(base(tmp_path, **extra))
    for name in named:
        assert name in message
    assert REDIS_PASSWORD not in message and "another-one" not in message


def test_redis_ca_file_with_tls_off_is_refused(tmp_path: Path, certs: dict[str, Path]) -> None:
    env = base(tmp_path, TIERSTREAM_REDIS_CA_FILE=str(certs["ca"]), TIERSTREAM_REDIS_TLS="no")
    message = config_error(env)
    assert "TIERSTREAM_REDIS_TLS" in message and "TIERSTREAM_REDIS_CA_FILE" in message


# -- Kafka SASL / TLS reach Faust and aiokafka ---------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_is_passed_through_to_faust_and_aiokafka(
    tmp_path: Path, certs: dict[str, Path], mechanism: str
) -> None:
    s = load_settings(
        base(
            tmp_path,
            TIERSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            TIERSTREAM_KAFKA_SASL_MECHANISM=mechanism,
            TIERSTREAM_KAFKA_SASL_USERNAME="tierstream-svc",
            TIERSTREAM_KAFKA_SASL_PASSWORD=SASL_PASSWORD,
            TIERSTREAM_KAFKA_SSL_CAFILE=str(certs["ca"]),
        )
    )
    credentials = faust_settings(s)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism == SASLMechanism(mechanism)
    assert credentials.protocol == AuthProtocol.SASL_SSL
    assert credentials.username == "tierstream-svc"
    assert credentials.password == SASL_PASSWORD
    context = credentials.ssl_context
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    subjects = [str(ca["subject"]) for ca in context.get_ca_certs()]
    assert any("tierstream-test-ca" in subject for subject in subjects)
    # What aiokafka's consumer and producer are built with.
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == mechanism
    assert auth["sasl_plain_username"] == "tierstream-svc"
    assert auth["sasl_plain_password"] == SASL_PASSWORD
    assert auth["ssl_context"] is context
    assert SASL_PASSWORD not in repr(credentials)
    # The read model's own consumer gets the same (its TLS context built the same way).
    own = aiokafka_security(s)
    assert {k: v for k, v in own.items() if k != "ssl_context"} == {
        k: v for k, v in auth.items() if k != "ssl_context"
    }
    assert own["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_sasl_plaintext_has_no_tls_and_is_warned_about(tmp_path: Path) -> None:
    s = load_settings(
        base(
            tmp_path,
            TIERSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            TIERSTREAM_KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
            TIERSTREAM_KAFKA_SASL_USERNAME="svc",
            TIERSTREAM_KAFKA_SASL_PASSWORD=SASL_PASSWORD,
        )
    )
    credentials = faust_settings(s)["broker_credentials"]
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None
    assert auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert any("SASL_PLAINTEXT" in w for w in s.warnings)


def test_ssl_with_a_client_certificate(tmp_path: Path, certs: dict[str, Path]) -> None:
    s = load_settings(
        base(
            tmp_path,
            TIERSTREAM_KAFKA_SECURITY_PROTOCOL="SSL",
            TIERSTREAM_KAFKA_SSL_CAFILE=str(certs["ca"]),
            TIERSTREAM_KAFKA_SSL_CERTFILE=str(certs["cert"]),
            TIERSTREAM_KAFKA_SSL_KEYFILE=str(certs["key"]),
        )
    )
    credentials = faust_settings(s)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol == AuthProtocol.SSL
    assert credentials.context.verify_mode == ssl.CERT_REQUIRED
    assert len(credentials.context.get_ca_certs()) >= 1
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth == {"security_protocol": "SSL", "ssl_context": credentials.context}


def test_ssl_with_the_system_trust_store(tmp_path: Path) -> None:
    s = load_settings(base(tmp_path, TIERSTREAM_KAFKA_SECURITY_PROTOCOL="SSL"))
    credentials = faust_settings(s)["broker_credentials"]
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"
    assert credentials.context.verify_mode == ssl.CERT_REQUIRED
    assert aiokafka_security(s)["security_protocol"] == "SSL"
    # Plaintext: no security arguments at all (aiokafka's defaults).
    assert aiokafka_security(load_settings(base(tmp_path))) == {}


# -- Redis password and TLS reach the Redis client -----------------------------------------------


def test_connect_with_password_and_tls(certs: dict[str, Path]) -> None:
    client = readmodel.connect(
        "redis://redis:6379/0", password=REDIS_PASSWORD, tls=True, ssl_ca_file=str(certs["ca"])
    )
    pool = client.connection_pool
    assert pool.connection_class is aioredis.SSLConnection
    assert pool.connection_kwargs["password"] == REDIS_PASSWORD
    assert pool.connection_kwargs["ssl_ca_certs"] == str(certs["ca"])
    assert REDIS_PASSWORD not in repr(client)


def test_connect_plain_with_the_password_in_the_url() -> None:
    client = readmodel.connect(f"redis://:{REDIS_PASSWORD}@redis:6379/2")
    pool = client.connection_pool
    assert pool.connection_class is aioredis.Connection
    assert pool.connection_kwargs["password"] == REDIS_PASSWORD
    assert pool.connection_kwargs["db"] == 2


@pytest.mark.parametrize(
    "extra",
    [
        {"TIERSTREAM_REDIS_URL": "rediss://redis:6380/0"},
        {"TIERSTREAM_REDIS_URL": "redis://redis:6380/0", "TIERSTREAM_REDIS_TLS": "true"},
    ],
)
async def test_the_worker_builds_a_tls_redis_client_with_the_password(
    tmp_path: Path, certs: dict[str, Path], extra: dict[str, str]
) -> None:
    s = load_settings(
        base(
            tmp_path,
            TIERSTREAM_REDIS_PASSWORD=REDIS_PASSWORD,
            TIERSTREAM_REDIS_CA_FILE=str(certs["ca"]),
            **extra,
        )
    )
    assert s.redis_tls
    _, rt = create_app(s)
    try:
        pool = rt.redis.connection_pool
        assert pool.connection_class is aioredis.SSLConnection
        assert pool.connection_kwargs["password"] == REDIS_PASSWORD
        assert pool.connection_kwargs["ssl_ca_certs"] == str(certs["ca"])
    finally:
        await rt.redis.aclose()


# -- secrets never show --------------------------------------------------------------------------


def all_secrets_settings(tmp_path: Path) -> Settings:
    return load_settings(
        base(
            tmp_path,
            TIERSTREAM_REDIS_URL=f"redis://:{REDIS_PASSWORD}@redis:6379/0",
            TIERSTREAM_WEB_TOKEN=WEB_TOKEN,
            TIERSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            TIERSTREAM_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
            TIERSTREAM_KAFKA_SASL_USERNAME="svc",
            TIERSTREAM_KAFKA_SASL_PASSWORD=SASL_PASSWORD,
        )
    )


def test_secrets_never_show_in_repr(tmp_path: Path) -> None:
    s = all_secrets_settings(tmp_path)
    for shown in (repr(s), str(s), f"{s}", repr(s.web_token), repr(s.kafka_sasl_password)):
        for secret in SECRETS:
            assert secret not in shown
    assert "redis://:***@redis:6379/0" in repr(s)
    assert s.redis_display == "redis://redis:6379/0"
    # The values are there for the code that needs them.
    assert s.web_token.value == WEB_TOKEN and s.kafka_sasl_password.value == SASL_PASSWORD


def test_secrets_never_show_in_faust_settings_repr(tmp_path: Path) -> None:
    text = repr(faust_settings(all_secrets_settings(tmp_path)))
    for secret in SECRETS:
        assert secret not in text


def test_the_worker_refuses_a_bad_setting_naming_it_without_secrets(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TIERSTREAM_")},
        **base(tmp_path),
        "TIERSTREAM_REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis:6379/zero",
        "TIERSTREAM_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
    }
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "configuration error" in done.stderr and "TIERSTREAM_REDIS_URL" in done.stderr
    for secret in SECRETS:
        assert secret not in done.stderr + done.stdout


def test_the_producer_sends_a_write_batchs_outputs_in_large_record_batches(tmp_path: Path) -> None:
    """Faust's producer gets the record batch size set in `faust_settings` (a misspelt Faust
    setting would be ignored): a write batch's profiles and states, about 150 of 1-2 KB per
    partition each second at this machine's rates, go out in one or two record batches, not one
    per 16 KB. The embedded broker lists every record batch a partition holds on each fetch of it,
    and with 16 KB batches the read model's fetches of the profiles slowed through a ten-minute
    soak (README, Known limits). Kafka's default message.max.bytes (1 MB) bounds it."""
    app, _ = create_app(load_settings(base(tmp_path)))
    producer_conf = app.producer._settings_default()  # type: ignore[attr-defined]
    assert 256 * 1024 <= producer_conf["max_batch_size"] < 1_000_000
    assert producer_conf["linger_ms"] == 5


def test_the_worker_hands_outputs_straight_to_the_producer(tmp_path: Path) -> None:
    """With `direct_sends` (the running worker) an output goes to the app's producer in one call,
    with its partition and headers, and the producer is started once; without it (agent tests)
    it goes through the topic's own `send`, with only the arguments given."""
    import asyncio

    app, runtime = create_app(load_settings(base(tmp_path)))
    produced: list[tuple[Any, ...]] = []
    starts: list[int] = []

    class Producer:
        async def send(self, *args: Any) -> str:
            produced.append(args)
            return "delivery"

    async def maybe_start_producer() -> Producer:
        starts.append(1)
        return Producer()

    topic_sends: list[dict[str, Any]] = []

    async def topic_send(**kwargs: Any) -> str:
        topic_sends.append(kwargs)
        return "topic delivery"

    app.maybe_start_producer = maybe_start_producer  # type: ignore[method-assign]
    runtime.out["tier-changes"].send = topic_send  # type: ignore[method-assign]
    headers = [("h", b"v")]

    async def scenario() -> list[Any]:
        got = [await runtime.produce("tier-changes", b"k", b"v")]
        runtime.direct_sends = True
        got.append(await runtime.produce("tier-changes", b"k", b"v", 3, headers))
        got.append(await runtime.produce("tierstream-profiles", b"k2", None, 5))
        return got

    assert asyncio.run(scenario()) == ["topic delivery", "delivery", "delivery"]
    assert topic_sends == [{"key": b"k", "value": b"v"}]
    assert produced == [
        ("tier-changes", b"k", b"v", 3, None, headers),
        ("tierstream-profiles", b"k2", None, 5, None, None),
    ]
    assert starts == [1]


def test_the_producer_places_keys_as_kafkas_default_partitioner(tmp_path: Path) -> None:
    """The worker's producer uses `producer_partitioner` (the default placement, with each key's
    hash remembered): set through Faust, and placing every key where aiokafka's
    DefaultPartitioner would, for any partition count, so outputs and profiles land on the
    partitions consumers and the read model expect."""
    import random

    from aiokafka.partitioner import DefaultPartitioner

    from streams.partitioning import partition_for, producer_partitioner

    app, _ = create_app(load_settings(base(tmp_path)))
    assert app.producer._settings_default()["partitioner"] is producer_partitioner  # type: ignore[attr-defined]
    rng = random.Random(11)
    default = DefaultPartitioner()
    for _ in range(2000):
        key = rng.randbytes(rng.randrange(0, 40))
        partitions = list(range(rng.randrange(1, 64)))
        expected = default(key, partitions, partitions)
        assert producer_partitioner(key, partitions, partitions) == expected
        assert producer_partitioner(key, partitions, partitions) == expected  # remembered
        assert partition_for(key, len(partitions)) == expected
        assert partition_for(bytearray(key), len(partitions)) == expected
    assert producer_partitioner(None, [0, 1, 2], [2]) == 2
