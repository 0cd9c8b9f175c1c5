"""Settings read once, at start, from `TIERSTREAM_*` environment variables, validated with a
message that names the variable. Nothing reads the environment at import time."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlparse

DEFAULT_WEB_PORT: Final = 6066


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


@dataclass(frozen=True)
class Settings:
    broker: str | None  # None: start/use the embedded broker (demo) — a worker needs one
    redis_url: str
    rules_path: Path | None
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
    holdout_share: float
    default_timezone: str
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

    @property
    def redis_display(self) -> str:
        """The Redis URL without credentials, for logs."""
        parsed = urlparse(self.redis_url)
        host = parsed.hostname or ""
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{host}{port}{parsed.path}"


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} must be between {lo} and {hi}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} must be between {lo} and {hi}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name) or default
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
    return path


def _broker(env: Mapping[str, str]) -> str | None:
    raw = env.get("TIERSTREAM_BROKER")
    if not raw:
        return None
    for part in raw.split(";"):
        url = part if "://" in part else f"kafka://{part}"
        parsed = urlparse(url)
        if parsed.scheme not in ("kafka", "aiokafka") or not parsed.hostname:
            raise ConfigError(
                f"TIERSTREAM_BROKER={raw!r} must be host:port or kafka://host:port[;kafka://...]"
            )
        try:
            port = parsed.port
        except ValueError:
            port = None
        if port is None:
            raise ConfigError(f"TIERSTREAM_BROKER={raw!r} needs a port (kafka://host:9092)")
    return ";".join(p if "://" in p else f"kafka://{p}" for p in raw.split(";"))


def bootstrap_servers(broker: str) -> str:
    """`kafka://a:1;kafka://b:2` as the `a:1,b:2` aiokafka expects."""
    return ",".join(urlparse(p).netloc for p in broker.split(";"))


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    redis_url = env.get("TIERSTREAM_REDIS_URL") or "redis://127.0.0.1:6379/0"
    parsed = urlparse(redis_url)
    if parsed.scheme not in ("redis", "rediss", "unix") or (
        parsed.scheme != "unix" and not parsed.hostname
    ):
        raise ConfigError(
            f"TIERSTREAM_REDIS_URL={RedisUrlForError(redis_url)} must look like redis://host:6379/0"
        )
    rules_path = _existing_file(env, "TIERSTREAM_RULES")
    if rules_path is not None and rules_path.suffix.lower() not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"TIERSTREAM_RULES={str(rules_path)!r} must be a .toml or .yaml file")
    web_host = env.get("TIERSTREAM_WEB_HOST") or "127.0.0.1"
    currency = (env.get("TIERSTREAM_BASE_CURRENCY") or "USD").upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise ConfigError(f"TIERSTREAM_BASE_CURRENCY={currency!r} must be a 3-letter ISO 4217 code")
    app_id = env.get("TIERSTREAM_APP_ID") or "tierstream"
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", app_id):
        raise ConfigError(
            f"TIERSTREAM_APP_ID={app_id!r} may only hold letters, digits, '.', '_', '-'"
        )
    timezone = env.get("TIERSTREAM_DEFAULT_TIMEZONE") or "Asia/Shanghai"
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(timezone)
    except Exception:
        raise ConfigError(
            f"TIERSTREAM_DEFAULT_TIMEZONE={timezone!r} is not an IANA time zone"
        ) from None
    protocol = _choice(
        env,
        "TIERSTREAM_KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    mechanism = env.get("TIERSTREAM_KAFKA_SASL_MECHANISM") or None
    if mechanism is not None and mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ConfigError(
            f"TIERSTREAM_KAFKA_SASL_MECHANISM={mechanism!r} must be PLAIN, SCRAM-SHA-256 "
            "or SCRAM-SHA-512"
        )
    if protocol.startswith("SASL") and (
        mechanism is None or not env.get("TIERSTREAM_KAFKA_SASL_USERNAME")
    ):
        raise ConfigError(
            "TIERSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_* needs TIERSTREAM_KAFKA_SASL_MECHANISM and "
            "TIERSTREAM_KAFKA_SASL_USERNAME (and TIERSTREAM_KAFKA_SASL_PASSWORD)"
        )
    return Settings(
        broker=_broker(env),
        redis_url=redis_url,
        rules_path=rules_path,
        web_host=web_host,
        web_port=_int(env, "TIERSTREAM_WEB_PORT", DEFAULT_WEB_PORT, 1, 65535),
        web_token=Secret(env.get("TIERSTREAM_WEB_TOKEN") or ""),
        partitions=_int(env, "TIERSTREAM_PARTITIONS", 8, 1, 1024),
        data_dir=Path(env.get("TIERSTREAM_DATA_DIR") or "./data"),
        app_id=app_id,
        store=_choice(env, "TIERSTREAM_STORE", "memory", ("memory", "rocksdb")),
        base_currency=currency,
        max_future_seconds=_int(env, "TIERSTREAM_MAX_FUTURE_SECONDS", 86_400, 0, 365 * 86_400),
        live_clock=_bool(env, "TIERSTREAM_LIVE_CLOCK", True),
        tick_seconds=_float(env, "TIERSTREAM_TICK_SECONDS", 1.0, 0.05, 3600),
        holdout_share=_float(env, "TIERSTREAM_HOLDOUT_SHARE", 0.10, 0.0, 1.0),
        default_timezone=timezone,
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=env.get("TIERSTREAM_KAFKA_SASL_USERNAME") or None,
        kafka_sasl_password=Secret(env.get("TIERSTREAM_KAFKA_SASL_PASSWORD") or ""),
        kafka_ssl_cafile=_existing_file(env, "TIERSTREAM_KAFKA_SSL_CAFILE"),
        kafka_ssl_certfile=_existing_file(env, "TIERSTREAM_KAFKA_SSL_CERTFILE"),
        kafka_ssl_keyfile=_existing_file(env, "TIERSTREAM_KAFKA_SSL_KEYFILE"),
        redis_password=Secret(env.get("TIERSTREAM_REDIS_PASSWORD") or ""),
        redis_tls=_bool(env, "TIERSTREAM_REDIS_TLS", False),
        redis_ca_file=_existing_file(env, "TIERSTREAM_REDIS_CA_FILE"),
        log_level=_choice(
            env, "TIERSTREAM_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
        ),
        fast_group_join=_bool(env, "TIERSTREAM_FAST_GROUP_JOIN", False),
    )


class RedisUrlForError(str):
    """Shows a Redis URL in an error without its password."""

    def __new__(cls, url: str) -> RedisUrlForError:
        parsed = urlparse(url)
        if parsed.password:
            url = url.replace(f":{parsed.password}@", ":***@")
        return super().__new__(cls, repr(url))
