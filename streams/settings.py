"""Settings read once, at start, from `TIERSTREAM_*` environment variables, validated with a
message that names the variable. Nothing reads the environment at import time.

Secrets (the web token, the Kafka SASL password, the Redis password, a password inside
`TIERSTREAM_REDIS_URL`) never show in `repr(settings)`, in an error message or in a log line:
they are `Secret`s, and the Redis URL is shown as `redis_display` (no credentials).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final
from urllib.parse import urlparse

DEFAULT_WEB_PORT: Final = 6066
DEFAULT_LAG_INTERVAL_SECONDS: Final = 5.0
#: The worker's young-generation garbage collection threshold (streams/gctuning.py).
DEFAULT_GC_THRESHOLD: Final = 50_000
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})
MIN_WEB_TOKEN_LENGTH: Final = 16

#: Every variable the service reads. `TIERSTREAM_URL` is the operator CLI's (where a worker is).
KNOWN_VARIABLES: Final = frozenset(
    {
        "TIERSTREAM_BROKER",
        "TIERSTREAM_REDIS_URL",
        "TIERSTREAM_RULES",
        "TIERSTREAM_SHADOW_RULES",
        "TIERSTREAM_REFIT_SECONDS",
        "TIERSTREAM_CUTPOINTS_SECONDS",
        "TIERSTREAM_WEB_HOST",
        "TIERSTREAM_WEB_PORT",
        "TIERSTREAM_WEB_TOKEN",
        "TIERSTREAM_PARTITIONS",
        "TIERSTREAM_DATA_DIR",
        "TIERSTREAM_APP_ID",
        "TIERSTREAM_STORE",
        "TIERSTREAM_EVENT_LOOP",
        "TIERSTREAM_BASE_CURRENCY",
        "TIERSTREAM_MAX_FUTURE_SECONDS",
        "TIERSTREAM_LIVE_CLOCK",
        "TIERSTREAM_TICK_SECONDS",
        "TIERSTREAM_ORDER_IDLE_MS",
        "TIERSTREAM_ORDER_MAX_HELD",
        "TIERSTREAM_FLUSH_RECORDS",
        "TIERSTREAM_FLUSH_MS",
        "TIERSTREAM_HOLDOUT_SHARE",
        "TIERSTREAM_CAMPAIGNS_ON_BACKFILL",
        "TIERSTREAM_DEFAULT_TIMEZONE",
        "TIERSTREAM_KAFKA_SECURITY_PROTOCOL",
        "TIERSTREAM_KAFKA_SASL_MECHANISM",
        "TIERSTREAM_KAFKA_SASL_USERNAME",
        "TIERSTREAM_KAFKA_SASL_PASSWORD",
        "TIERSTREAM_KAFKA_SSL_CAFILE",
        "TIERSTREAM_KAFKA_SSL_CERTFILE",
        "TIERSTREAM_KAFKA_SSL_KEYFILE",
        "TIERSTREAM_REDIS_PASSWORD",
        "TIERSTREAM_REDIS_TLS",
        "TIERSTREAM_REDIS_CA_FILE",
        "TIERSTREAM_LOG_LEVEL",
        "TIERSTREAM_FAST_GROUP_JOIN",
        "TIERSTREAM_LAG_INTERVAL_SECONDS",
        "TIERSTREAM_FETCH_MAX_WAIT_MS",
        "TIERSTREAM_GC_THRESHOLD",
        "TIERSTREAM_URL",
    }
)

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ConfigError(ValueError):
    """A bad configuration value; the message names the variable."""


@dataclass(frozen=True)
class Secret:
    """A secret string that never shows in logs or reprs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')" if self.value else "Secret('')"

    def __bool__(self) -> bool:
        return bool(self.value)


def mask_url(url: str) -> str:
    """`url` with the password of its user-info (if any) replaced by `***`."""
    try:
        parsed = urlparse(url)
        password = parsed.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    netloc = parsed.netloc.replace(f":{password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class Settings:
    broker: str | None  # None: start/use the embedded broker (demo) — a worker needs one
    redis_url: str  # may hold a password: shown only as `redis_display`
    rules_path: Path | None
    # Seconds between BG/NBD refits from the table (0: never; the defaults stay in force).
    refit_seconds: float
    # Seconds between RFM quintile cut-point refreshes (scoring.method = "quantile").
    cutpoints_seconds: float
    # Rules evaluated beside the real ones and reported (GET /shadow), never published.
    shadow_rules_path: Path | None
    web_host: str
    web_port: int
    web_token: Secret
    partitions: int
    data_dir: Path
    app_id: str
    store: str
    base_currency: str
    max_future_seconds: int
    live_clock: bool
    tick_seconds: float
    # Event-time order across the input topics of a partition (streams/ordering.py): a record
    # waits until every other input topic has passed its time or been quiet this long (0: fold
    # in arrival order), and at most this many records are held per partition.
    order_idle_ms: int
    order_max_held: int
    # State writes are batched per partition until the outputs they go with are delivered
    # (streams/writebehind.py): at most this many input records, or this long.
    flush_records: int
    flush_ms: int
    # None: the rules file's [campaigns] value (or its default) holds.
    holdout_share: float | None
    default_timezone: str | None
    campaigns_on_backfill: bool
    kafka_security_protocol: str
    kafka_sasl_mechanism: str | None
    kafka_sasl_username: str | None
    kafka_sasl_password: Secret
    kafka_ssl_cafile: Path | None
    kafka_ssl_certfile: Path | None
    kafka_ssl_keyfile: Path | None
    redis_password: Secret
    redis_tls: bool
    redis_ca_file: Path | None
    log_level: str
    fast_group_join: bool
    lag_interval_seconds: float = DEFAULT_LAG_INTERVAL_SECONDS
    #: The longest a fetch waits for records (streams/kafka_fixes.py: Faust hard-codes 1,500).
    fetch_max_wait_ms: int = 100
    #: The worker's young-generation garbage collection threshold (streams/gctuning.py); 0
    #: leaves Python's defaults.
    gc_threshold: int = DEFAULT_GC_THRESHOLD
    #: The worker's event loop: "uvloop" (faust-streaming[uvloop]) or the standard "asyncio".
    event_loop: str = "asyncio"
    #: Things worth a log line at start that do not stop it (names only, never values).
    warnings: tuple[str, ...] = ()

    @property
    def redis_display(self) -> str:
        """The Redis URL without credentials, for logs."""
        parsed = urlparse(self.redis_url)
        host = parsed.hostname or ""
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{host}{port}{parsed.path}"

    @property
    def web_exposed(self) -> bool:
        """The web port listens beyond loopback."""
        return self.web_host not in LOOPBACK_HOSTS

    def __repr__(self) -> str:
        # Secrets are `Secret`s (they repr as '***'); the Redis URL may carry a password.
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "redis_url":
                value = mask_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} must be between {lo} and {hi}")
    return value


def _gc_threshold(env: Mapping[str, str]) -> int:
    value = _int(env, "TIERSTREAM_GC_THRESHOLD", DEFAULT_GC_THRESHOLD, 0, 10_000_000)
    if 0 < value < 100:
        raise ConfigError(
            f"TIERSTREAM_GC_THRESHOLD={value} must be 0 (Python's defaults) or at least 100"
        )
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not lo <= value <= hi:  # also refuses nan
        raise ConfigError(f"{name}={raw.strip()} must be between {lo} and {hi}")
    return value


def _bool_or_none(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _bool_or_none(env, name)
    return default if value is None else value


def _choice(
    env: Mapping[str, str],
    name: str,
    default: str,
    allowed: tuple[str, ...],
    *,
    case: str = "exact",
) -> str:
    value = (env.get(name) or "").strip() or default
    if case == "upper":
        value = value.upper()
    elif case == "lower":
        value = value.lower()
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(allowed)}")
    return value


def _existing_file(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f"{name}={raw!r}: no such file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{name}={raw!r}: file is not readable")
    return path


def _broker(env: Mapping[str, str]) -> str | None:
    raw = (env.get("TIERSTREAM_BROKER") or "").strip()
    if not raw:
        return None
    parts = [p.strip() for p in raw.replace(",", ";").split(";") if p.strip()]
    if not parts:
        raise ConfigError(f"TIERSTREAM_BROKER={raw!r} must be host:port or kafka://host:port")
    out = []
    for part in parts:
        url = part if "://" in part else f"kafka://{part}"
        try:
            parsed = urlparse(url)
            port = parsed.port
        except ValueError:
            raise ConfigError(
                f"TIERSTREAM_BROKER={mask_url(raw)!r}: bad port in {mask_url(part)!r}"
            ) from None
        if parsed.username is not None or parsed.password is not None:
            raise ConfigError(
                "TIERSTREAM_BROKER must not carry credentials: set TIERSTREAM_KAFKA_SASL_USERNAME "
                "and TIERSTREAM_KAFKA_SASL_PASSWORD instead"
            )
        if parsed.scheme not in ("kafka", "aiokafka") or not parsed.hostname:
            raise ConfigError(
                f"TIERSTREAM_BROKER={raw!r} must be host:port or kafka://host:port[;kafka://...]"
            )
        if port is None:
            raise ConfigError(f"TIERSTREAM_BROKER={raw!r} needs a port (kafka://host:9092)")
        if parsed.path not in ("", "/") or parsed.query:
            raise ConfigError(f"TIERSTREAM_BROKER={raw!r}: only kafka://host:port is allowed")
        out.append(f"{parsed.scheme}://{parsed.netloc}")
    return ";".join(out)


def bootstrap_servers(broker: str) -> str:
    """`kafka://a:1;kafka://b:2` as the `a:1,b:2` aiokafka expects."""
    return ",".join(urlparse(p).netloc for p in broker.split(";"))


def _redis_url(env: Mapping[str, str]) -> str:
    redis_url = (env.get("TIERSTREAM_REDIS_URL") or "").strip() or "redis://127.0.0.1:6379/0"
    shown = RedisUrlForError(redis_url)
    try:
        parsed = urlparse(redis_url)
        port = parsed.port
    except ValueError:
        raise ConfigError(f"TIERSTREAM_REDIS_URL={shown} has a bad port") from None
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"TIERSTREAM_REDIS_URL={shown} must look like redis://host:6379/0 "
            "(rediss:// for TLS, unix:///path/to/socket)"
        )
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ConfigError(f"TIERSTREAM_REDIS_URL={shown} needs a socket path")
        return redis_url
    if not parsed.hostname:
        raise ConfigError(f"TIERSTREAM_REDIS_URL={shown} must look like redis://host:6379/0")
    if port == 0:
        raise ConfigError(f"TIERSTREAM_REDIS_URL={shown} has a bad port")
    if parsed.path not in ("", "/") and not re.fullmatch(r"/\d{1,5}", parsed.path):
        raise ConfigError(f"TIERSTREAM_REDIS_URL={shown}: the path must be a database number (/0)")
    return redis_url


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def _web_host(env: Mapping[str, str]) -> str:
    raw = env.get("TIERSTREAM_WEB_HOST")
    host = (raw or "").strip() or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    all_numeric = re.fullmatch(r"[\d.]+", host) is not None  # 300.1.1.1 is no host name
    if all_numeric or len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ConfigError(
            f"TIERSTREAM_WEB_HOST={raw!r} must be an IP address to bind (127.0.0.1, 0.0.0.0, ::) "
            "or a host name"
        )
    return host


def _web_token(env: Mapping[str, str]) -> Secret:
    raw = env.get("TIERSTREAM_WEB_TOKEN") or ""
    if not raw:
        return Secret("")
    # The value itself never goes into a message.
    if not re.fullmatch(r"[\x21-\x7e]+", raw):
        raise ConfigError(
            "TIERSTREAM_WEB_TOKEN may only hold printable ASCII without spaces "
            "(it is sent in an HTTP header)"
        )
    if len(raw) < MIN_WEB_TOKEN_LENGTH:
        raise ConfigError(
            f"TIERSTREAM_WEB_TOKEN is too short ({len(raw)} characters): use at least "
            f"{MIN_WEB_TOKEN_LENGTH}, e.g. the output of `openssl rand -hex 32`"
        )
    return Secret(raw)


def _data_dir(env: Mapping[str, str]) -> Path:
    raw = env.get("TIERSTREAM_DATA_DIR") or "./data"
    path = Path(raw)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"TIERSTREAM_DATA_DIR={raw!r} exists and is not a directory")
    # The nearest existing ancestor must let us create and write the directory.
    ancestor = path.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"TIERSTREAM_DATA_DIR={raw!r}: {str(ancestor)!r} is not writable")
    return path


def _timezone(env: Mapping[str, str]) -> str:
    timezone = (env.get("TIERSTREAM_DEFAULT_TIMEZONE") or "").strip() or "Asia/Shanghai"
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(timezone)
    except Exception:
        raise ConfigError(
            f"TIERSTREAM_DEFAULT_TIMEZONE={timezone!r} is not an IANA time zone "
            "(e.g. Asia/Shanghai, Europe/Paris, UTC)"
        ) from None
    return timezone


@dataclass(frozen=True)
class _Kafka:
    protocol: str
    mechanism: str | None
    username: str | None
    password: Secret
    cafile: Path | None
    certfile: Path | None
    keyfile: Path | None


def _kafka_security(env: Mapping[str, str]) -> _Kafka:
    protocol = _choice(
        env, "TIERSTREAM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", SECURITY_PROTOCOLS, case="upper"
    )
    raw_mechanism = (env.get("TIERSTREAM_KAFKA_SASL_MECHANISM") or "").strip()
    mechanism = raw_mechanism.upper() or None
    if mechanism is not None and mechanism not in SASL_MECHANISMS:
        raise ConfigError(
            f"TIERSTREAM_KAFKA_SASL_MECHANISM={raw_mechanism!r} must be PLAIN, SCRAM-SHA-256 "
            "or SCRAM-SHA-512"
        )
    username = env.get("TIERSTREAM_KAFKA_SASL_USERNAME") or None
    password = Secret(env.get("TIERSTREAM_KAFKA_SASL_PASSWORD") or "")
    sasl = protocol.startswith("SASL_")
    if sasl:
        missing = [
            name
            for name, value in (
                ("TIERSTREAM_KAFKA_SASL_MECHANISM", mechanism),
                ("TIERSTREAM_KAFKA_SASL_USERNAME", username),
                ("TIERSTREAM_KAFKA_SASL_PASSWORD", password.value),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                f"TIERSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}"
            )
    else:
        stray = [
            name
            for name in (
                "TIERSTREAM_KAFKA_SASL_MECHANISM",
                "TIERSTREAM_KAFKA_SASL_USERNAME",
                "TIERSTREAM_KAFKA_SASL_PASSWORD",
            )
            if env.get(name)
        ]
        if stray:
            raise ConfigError(
                f"{', '.join(stray)} set, but TIERSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} does "
                "not use SASL: set it to SASL_SSL (or SASL_PLAINTEXT)"
            )
    cafile = _existing_file(env, "TIERSTREAM_KAFKA_SSL_CAFILE")
    certfile = _existing_file(env, "TIERSTREAM_KAFKA_SSL_CERTFILE")
    keyfile = _existing_file(env, "TIERSTREAM_KAFKA_SSL_KEYFILE")
    if not protocol.endswith("SSL"):
        stray = [
            name
            for name, value in (
                ("TIERSTREAM_KAFKA_SSL_CAFILE", cafile),
                ("TIERSTREAM_KAFKA_SSL_CERTFILE", certfile),
                ("TIERSTREAM_KAFKA_SSL_KEYFILE", keyfile),
            )
            if value is not None
        ]
        if stray:
            raise ConfigError(
                f"{', '.join(stray)} set, but TIERSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} does "
                "not use TLS: set it to SSL or SASL_SSL"
            )
    if keyfile is not None and certfile is None:
        raise ConfigError(
            "TIERSTREAM_KAFKA_SSL_KEYFILE needs TIERSTREAM_KAFKA_SSL_CERTFILE (the client "
            "certificate it belongs to)"
        )
    return _Kafka(protocol, mechanism, username, password, cafile, certfile, keyfile)


def _unknown_variables(env: Mapping[str, str]) -> list[str]:
    out = []
    for name in sorted(env):
        if not name.startswith("TIERSTREAM_") or name in KNOWN_VARIABLES:
            continue
        close = difflib.get_close_matches(name, sorted(KNOWN_VARIABLES), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"unknown setting {name} is ignored{hint}")
    return out


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    redis_url = _redis_url(env)
    rules_path = _existing_file(env, "TIERSTREAM_RULES")
    if rules_path is not None and rules_path.suffix.lower() not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"TIERSTREAM_RULES={str(rules_path)!r} must be a .toml or .yaml file")
    web_host = _web_host(env)
    web_token = _web_token(env)
    currency = (env.get("TIERSTREAM_BASE_CURRENCY") or "USD").strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise ConfigError(f"TIERSTREAM_BASE_CURRENCY={currency!r} must be a 3-letter ISO 4217 code")
    app_id = (env.get("TIERSTREAM_APP_ID") or "").strip() or "tierstream"
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", app_id):
        raise ConfigError(
            f"TIERSTREAM_APP_ID={app_id!r} may only hold letters, digits, '.', '_', '-'"
        )
    kafka = _kafka_security(env)
    redis_password = Secret(env.get("TIERSTREAM_REDIS_PASSWORD") or "")
    redis_ca_file = _existing_file(env, "TIERSTREAM_REDIS_CA_FILE")
    tls_setting = _bool_or_none(env, "TIERSTREAM_REDIS_TLS")
    scheme = urlparse(redis_url).scheme
    if tls_setting is False and (scheme == "rediss" or redis_ca_file is not None):
        why = (
            "TIERSTREAM_REDIS_URL uses rediss:// (TLS)"
            if scheme == "rediss"
            else "TIERSTREAM_REDIS_CA_FILE is set"
        )
        raise ConfigError(f"TIERSTREAM_REDIS_TLS=false contradicts: {why}")
    redis_tls = scheme == "rediss" or redis_ca_file is not None or bool(tls_setting)
    if redis_tls and scheme == "unix":
        raise ConfigError(
            "TIERSTREAM_REDIS_TLS: TLS needs a TCP Redis URL (rediss://host:6380/0), not unix://"
        )
    url_password = urlparse(redis_url).password
    if redis_password and url_password and url_password != redis_password.value:
        raise ConfigError(
            "TIERSTREAM_REDIS_PASSWORD and the password in TIERSTREAM_REDIS_URL differ: set one"
        )
    partitions = _int(env, "TIERSTREAM_PARTITIONS", 8, 1, 1024)
    web_port = _int(env, "TIERSTREAM_WEB_PORT", DEFAULT_WEB_PORT, 1, 65535)

    warnings = _unknown_variables(env)
    if web_host not in LOOPBACK_HOSTS and not web_token:
        warnings.append(
            f"TIERSTREAM_WEB_HOST={web_host} exposes customer profiles beyond loopback without "
            "TIERSTREAM_WEB_TOKEN: set a token (/health and /metrics stay open)"
        )
    if kafka.protocol == "SASL_PLAINTEXT":
        warnings.append(
            "TIERSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT sends Kafka traffic unencrypted: "
            "prefer SASL_SSL"
        )
    return Settings(
        broker=_broker(env),
        redis_url=redis_url,
        rules_path=rules_path,
        shadow_rules_path=_existing_file(env, "TIERSTREAM_SHADOW_RULES"),
        refit_seconds=_float(env, "TIERSTREAM_REFIT_SECONDS", 3600.0, 0.0, 30 * 86_400),
        cutpoints_seconds=_float(env, "TIERSTREAM_CUTPOINTS_SECONDS", 600.0, 1.0, 30 * 86_400),
        web_host=web_host,
        web_port=web_port,
        web_token=web_token,
        partitions=partitions,
        data_dir=_data_dir(env),
        app_id=app_id,
        store=_choice(env, "TIERSTREAM_STORE", "memory", ("memory", "rocksdb"), case="lower"),
        event_loop=_choice(
            env, "TIERSTREAM_EVENT_LOOP", "asyncio", ("uvloop", "asyncio"), case="lower"
        ),
        base_currency=currency,
        max_future_seconds=_int(env, "TIERSTREAM_MAX_FUTURE_SECONDS", 86_400, 0, 365 * 86_400),
        live_clock=_bool(env, "TIERSTREAM_LIVE_CLOCK", True),
        tick_seconds=_float(env, "TIERSTREAM_TICK_SECONDS", 1.0, 0.05, 3600),
        order_idle_ms=_int(env, "TIERSTREAM_ORDER_IDLE_MS", 1000, 0, 3_600_000),
        order_max_held=_int(env, "TIERSTREAM_ORDER_MAX_HELD", 100_000, 1, 10_000_000),
        flush_records=_int(env, "TIERSTREAM_FLUSH_RECORDS", 5000, 1, 100_000),
        flush_ms=_int(env, "TIERSTREAM_FLUSH_MS", 1000, 1, 60_000),
        holdout_share=(
            _float(env, "TIERSTREAM_HOLDOUT_SHARE", 0.10, 0.0, 1.0)
            if env.get("TIERSTREAM_HOLDOUT_SHARE")
            else None
        ),
        default_timezone=_timezone(env) if env.get("TIERSTREAM_DEFAULT_TIMEZONE") else None,
        campaigns_on_backfill=_bool(env, "TIERSTREAM_CAMPAIGNS_ON_BACKFILL", False),
        kafka_security_protocol=kafka.protocol,
        kafka_sasl_mechanism=kafka.mechanism,
        kafka_sasl_username=kafka.username,
        kafka_sasl_password=kafka.password,
        kafka_ssl_cafile=kafka.cafile,
        kafka_ssl_certfile=kafka.certfile,
        kafka_ssl_keyfile=kafka.keyfile,
        redis_password=redis_password,
        redis_tls=redis_tls,
        redis_ca_file=redis_ca_file,
        log_level=_choice(
            env,
            "TIERSTREAM_LOG_LEVEL",
            "info",
            ("debug", "info", "warning", "error"),
            case="lower",
        ),
        fast_group_join=_bool(env, "TIERSTREAM_FAST_GROUP_JOIN", False),
        lag_interval_seconds=_float(
            env, "TIERSTREAM_LAG_INTERVAL_SECONDS", DEFAULT_LAG_INTERVAL_SECONDS, 0.1, 3600
        ),
        fetch_max_wait_ms=_int(env, "TIERSTREAM_FETCH_MAX_WAIT_MS", 100, 1, 30_000),
        gc_threshold=_gc_threshold(env),
        warnings=tuple(warnings),
    )


class RedisUrlForError(str):
    """Shows a Redis URL in an error without its password."""

    def __new__(cls, url: str) -> RedisUrlForError:
        return super().__new__(cls, repr(mask_url(url)))
