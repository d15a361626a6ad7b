"""Records between kafka-python 3.0 and Spool's own tools, byte for byte.

    kafka_python_interop.py produce BOOTSTRAP TOPIC
        produces a fixed set of records (binary and text keys and values, a
        null key, a null value, headers with binary, empty and repeated
        values, explicit timestamps) to partition 0, and prints them as JSON lines
        in `spool consume --format json`'s shape;
    kafka_python_interop.py consume BOOTSTRAP TOPIC COUNT
        reads COUNT records of partition 0 from its start (manual
        assignment) and prints them the same way.

Run by clients/spool-cli/tests/cli.rs, which compares the lines with what
`spool consume --format json` printed or `spool produce --format json` was
given."""

import base64
import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def field(obj, name, data):
    """`name` as text when it is UTF-8, else `name_base64`; null if None."""
    if data is None:
        obj[name] = None
        return
    try:
        obj[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        obj[name + "_base64"] = base64.b64encode(data).decode()


def line(offset, timestamp, key, value, headers):
    obj = {"partition": 0, "offset": offset, "timestamp": timestamp}
    field(obj, "key", key)
    field(obj, "value", value)
    if headers:
        out = []
        for name, v in headers:
            h = {"name": name}
            field(h, "value", v)
            out.append(h)
        obj["headers"] = out
    return json.dumps(obj, sort_keys=True)


RECORDS = [
    (b"k1", b"plain text", [("trace", b"abc")], 1_700_000_000_000),
    (b"\xff\x00key", b"\x00\x01\x02\xfe\xff", [("bin", b"\x80\x81"), ("empty", b"")], 1_700_000_000_001),
    (None, b"no key", [], 1_700_000_000_005),
    (b"tombstone", None, [("why", b"deleted")], 1_699_999_999_000),
    (b"k5", "unicod\u00e9 \u2603".encode(), [("h", b""), ("h", b"twice")], 1_700_000_000_010),
]

mode, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "produce":
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, request_timeout_ms=20000)
    for offset, (key, value, headers, ts) in enumerate(RECORDS):
        meta = producer.send(topic, key=key, value=value, headers=headers,
                             partition=0, timestamp_ms=ts).get(timeout=20)
        print(line(meta.offset, ts, key, value, headers))
    producer.close()
elif mode == "consume":
    count = int(sys.argv[4])
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=10000)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    seen = 0
    for m in consumer:
        print(line(m.offset, m.timestamp, m.key, m.value, m.headers))
        seen += 1
        if seen == count:
            break
    consumer.close()
    if seen != count:
        print(f"read {seen} of {count} records", file=sys.stderr)
        sys.exit(1)
else:
    sys.exit(f"unknown mode {mode}")
