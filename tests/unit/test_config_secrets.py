"""Secrets come from the environment (or a file it names), never from the
configuration: setting one must not break the settings, and every Kafka
client (aiokafka, Faust, librdkafka) gets the credentials and TLS."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from agents.app import broker_credentials
from agents.ingest import librdkafka_options
from engine.config import ConfigError, Settings, load_settings
from engine.kafka import client_options

REPO = Path(__file__).resolve().parents[2]
SECRETS_SET = {
    "IOTCRM_KAFKA_SASL_PASSWORD": "kafka-s3cret",
    "IOTCRM_CASSANDRA_PASSWORD": "cassandra-s3cret",
}


def test_setting_the_documented_secrets_leaves_the_settings_valid() -> None:
    settings = load_settings(REPO / "iotcrm.toml", environ=SECRETS_SET)
    assert settings.kafka.sasl_username == ""
    assert "s3cret" not in repr(settings), "a secret never becomes a setting"


def test_a_secret_can_come_from_a_file_the_environment_names(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    environ = {"IOTCRM_CASSANDRA_PASSWORD_FILE": str(secret)}
    load_settings(REPO / "iotcrm.toml", environ=environ)  # not a setting either
    assert Settings.secret("CASSANDRA_PASSWORD", environ) == "from-a-file"
    with pytest.raises(ConfigError, match="IOTCRM_CASSANDRA_PASSWORD_FILE"):
        Settings.secret("CASSANDRA_PASSWORD", {"IOTCRM_CASSANDRA_PASSWORD_FILE": "/nonexistent"})
    with pytest.raises(ValueError, match="not a secret"):
        Settings.secret("KAFKA_BOOTSTRAP", {})


def test_an_unknown_setting_is_still_refused() -> None:
    with pytest.raises(ConfigError, match="sasl_pasword"):
        load_settings(REPO / "iotcrm.toml", environ={"IOTCRM_KAFKA_SASL_PASWORD": "typo"})


def test_every_kafka_client_gets_sasl_over_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTCRM_KAFKA_SASL_PASSWORD", "kafka-s3cret")
    settings = load_settings(REPO / "iotcrm.toml", environ={"IOTCRM_KAFKA_SASL_USERNAME": "iotcrm"})
    aiokafka = client_options(settings)
    assert aiokafka["security_protocol"] == "SASL_SSL"
    assert aiokafka["sasl_plain_password"] == "kafka-s3cret"
    assert isinstance(aiokafka["ssl_context"], ssl.SSLContext)
    faust = broker_credentials(settings)
    assert faust is not None
    assert (faust.username, faust.password) == ("iotcrm", "kafka-s3cret")
    assert isinstance(faust.ssl_context, ssl.SSLContext)
    librdkafka = librdkafka_options(settings)
    assert librdkafka["security.protocol"] == "SASL_SSL"
    assert librdkafka["sasl.password"] == "kafka-s3cret"


def test_without_a_username_clients_connect_in_plain() -> None:
    settings = load_settings(REPO / "iotcrm.toml", environ={})
    assert broker_credentials(settings) is None
    assert "security_protocol" not in client_options(settings)
