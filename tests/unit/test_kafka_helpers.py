"""Our murmur2 must place keys exactly where Kafka's Java client (and aiokafka) would."""

import random

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from pipeline.runtime.partitioner import murmur2, partition_for


def test_murmur2_matches_aiokafka_for_every_length_and_tail() -> None:
    rng = random.Random(3)
    for length in range(0, 130):
        for _ in range(25):
            data = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(data) == aiokafka_murmur2(data), data


def test_known_partitions_of_the_java_client() -> None:
    # Values from Kafka's own test of its default partitioner (Utils.murmur2 test vectors).
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF
    assert murmur2(b"foobar") == -790332482 & 0xFFFFFFFF
    assert partition_for(b"customer_id:C1", 4) == (aiokafka_murmur2(b"customer_id:C1") & 0x7FFFFFFF) % 4


def test_security_settings_reach_every_client() -> None:
    from pipeline.runtime import kafka
    from pipeline.settings import Settings

    assert kafka.security(Settings()) == {"security_protocol": "PLAINTEXT"}
    scram = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="omni", kafka_sasl_password="secret")
    options = kafka.security(scram)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512" and options["sasl_plain_username"] == "omni"
    assert options["ssl_context"] is not None
