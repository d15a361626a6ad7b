"""kafka-python 3.0 against Spool's Kafka listener: producers with keys,
headers and timestamps for each codec and acks 0, 1 and all, idempotent
(kafka-python 3's default) where acks=all, with small and large batches;
then a consumer with manual assignment and seek that reads every record
back exactly once, in order per partition. Run by tests/kafka.rs with the
listener's address and a topic of two partitions; exits non-zero, with the
reason, on any mismatch."""

import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap = sys.argv[1]
topic = sys.argv[2]
failures = []
sent = {0: [], 1: []}
ts = 1_700_000_000_000

runs = [
    ("none", "all", 16384), ("gzip", "all", 200), ("snappy", "all", 65536),
    ("lz4", 1, 16384), ("zstd", "all", 1_000_000), ("none", 0, 100),
]
for n, (codec, acks, batch_size) in enumerate(runs):
    idempotent = acks == "all"
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        compression_type=None if codec == "none" else codec,
        acks=acks,
        enable_idempotence=idempotent,
        batch_size=batch_size,
        linger_ms=5,
        request_timeout_ms=20000,
    )
    if producer.config["enable_idempotence"] != idempotent:
        failures.append(f"run {n}: idempotence not {idempotent}")
    futures = []
    for i in range(60):
        partition = i % 2
        key = f"{n}-{codec}-{i}".encode()
        value = (f"{codec} value {i} ".encode() * (1 + i % 9)) if i % 10 else None
        headers = [("run", str(n).encode()), ("empty", b"")]
        stamp = ts + n * 1000 + i
        futures.append(producer.send(topic, key=key, value=value, headers=headers,
                                     partition=partition, timestamp_ms=stamp))
        sent[partition].append((key, value, headers, stamp))
    producer.flush(30)
    for f in futures:
        try:
            meta = f.get(timeout=30)
            if acks != 0 and meta.offset < 0:
                failures.append(f"run {n}: offset {meta.offset}")
        except Exception as e:  # noqa: BLE001 - report whatever the client raised
            failures.append(f"run {n} ({codec}, acks={acks}): {e!r}")
            break
    producer.close(timeout=10)

consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         auto_offset_reset="earliest", consumer_timeout_ms=15000)
for partition in (0, 1):
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    got = []
    for msg in consumer:
        got.append((msg.key, msg.value, [(k, v) for k, v in msg.headers], msg.timestamp))
        if msg.offset != len(got) - 1:
            failures.append(f"partition {partition}: offset {msg.offset} at {len(got) - 1}")
            break
        if len(got) == len(sent[partition]):
            break
    if got != sent[partition]:
        failures.append(f"partition {partition}: read back {len(got)} records of "
                        f"{len(sent[partition])}, or not the ones sent")
    # Seek into the middle and read one again.
    consumer.seek(tp, 17)
    batch = consumer.poll(timeout_ms=10000, max_records=1)
    msgs = batch.get(tp, [])
    if not msgs or msgs[0].offset != 17 or msgs[0].key != sent[partition][17][0]:
        failures.append(f"partition {partition}: seek to 17 read {msgs[:1]}")
    end = consumer.end_offsets([tp])[tp]
    if end != len(sent[partition]):
        failures.append(f"partition {partition}: end offset {end}, sent {len(sent[partition])}")
consumer.close()

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"ok: {sum(len(v) for v in sent.values())} records, {len(runs)} producers")
