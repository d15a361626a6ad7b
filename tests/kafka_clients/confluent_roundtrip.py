"""confluent-kafka (librdkafka 2.16) against Spool's Kafka listener: a
producer with keys, headers and timestamps, each codec (idempotent for all
but the first, so InitProducerId and sequence checks are in the path, with
five requests in flight), then a consumer with manual assignment and seek
that reads every record back, each exactly once. Run by tests/kafka.rs
with the address of the listener as its argument; exits non-zero, with the
reason, on any mismatch."""

import sys

from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap = sys.argv[1]
topic = sys.argv[2]
failures = []

sent = []
for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "compression.type": codec,
        "enable.idempotence": codec != "none",
        "max.in.flight.requests.per.connection": 5,
        "batch.num.messages": 7,
        "linger.ms": 5,
        "message.timeout.ms": 20000,
    })
    delivered = []

    def on_delivery(err, msg, delivered=delivered):
        if err is not None:
            failures.append(f"delivery failed: {err}")
        else:
            delivered.append((msg.partition(), msg.offset()))

    for i in range(50):
        key = f"{codec}-key-{i}".encode()
        value = f"{codec} value {i} ".encode() * (1 + i % 7)
        producer.produce(topic, value=value, key=key, headers=[("codec", codec.encode())],
                         on_delivery=on_delivery)
        sent.append((key, value, codec))
    left = producer.flush(20)
    if left:
        failures.append(f"{left} messages of codec {codec} not delivered")
    if len(delivered) != 50:
        failures.append(f"codec {codec}: {len(delivered)} deliveries of 50")

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "unused-manual-assignment",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
})
consumer.assign([TopicPartition(topic, 0, 0)])
got = []
while len(got) < len(sent):
    msg = consumer.poll(10)
    if msg is None:
        failures.append(f"timed out after {len(got)} of {len(sent)} records")
        break
    if msg.error():
        failures.append(f"consume error: {msg.error()}")
        break
    codec = dict(msg.headers() or []).get("codec", b"?").decode()
    got.append((msg.key(), msg.value(), codec))
if got != sent:
    failures.append(f"read back {len(got)} records, not what was sent")

# Seek back and read one record again.
consumer.seek(TopicPartition(topic, 0, 3))
msg = consumer.poll(10)
if msg is None or msg.offset() != 3 or msg.key() != sent[3][0]:
    failures.append(f"seek to 3 read {msg and (msg.offset(), msg.key())}")
consumer.close()

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"ok: {len(sent)} records, 5 codecs")
