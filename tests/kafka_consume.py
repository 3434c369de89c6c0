#!/usr/bin/env python3
"""An independent Kafka consumer for the tests.

It uses confluent-kafka (its wheel bundles a current librdkafka), not our
code. It reads TOPIC from BROKERS in a fresh consumer group from the
earliest offset, until at least COUNT messages have arrived and then 2 s
pass without another (so repeats are seen too), or TIMEOUT seconds pass. It prints one JSON object per message (topic, key, value, headers).
It exits 0 when COUNT messages arrived, and 1 otherwise.

usage: kafka_consume.py BROKERS TOPIC COUNT TIMEOUT
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer


def main() -> int:
    brokers, topic, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "auditrelay-test-" + uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received = 0
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if received >= count and time.monotonic() - last > 2.0:
                break
            message = consumer.poll(0.5)
            if message is None:
                continue
            last = time.monotonic()
            if message.error():
                print(json.dumps({"error": str(message.error())}), file=sys.stderr)
                continue
            print(
                json.dumps(
                    {
                        "topic": message.topic(),
                        "key": message.key().decode() if message.key() is not None else None,
                        "value": message.value().decode(),
                        "headers": {k: v.decode() for k, v in (message.headers() or [])},
                    }
                ),
                flush=True,
            )
            received += 1
    finally:
        consumer.close()
    return 0 if received >= count else 1


if __name__ == "__main__":
    sys.exit(main())
