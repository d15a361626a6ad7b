"""confluent-kafka's AdminClient against Spool's Kafka listener: create a
topic with partitions and mapped configs, refuse an unsupported config and
a replication factor above 1, list it in metadata, validate only, delete it.
Run by tests/kafka.rs with the listener's address; exits non-zero, with the
reason, on any mismatch."""

import sys

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

admin = AdminClient({"bootstrap.servers": sys.argv[1]})
failures = []


def outcome(futures):
    out = {}
    for name, f in futures.items():
        try:
            f.result(20)
            out[name] = None
        except KafkaException as e:
            out[name] = e.args[0]
    return out


made = outcome(admin.create_topics([
    NewTopic("orders", num_partitions=3, replication_factor=1,
             config={"retention.ms": "3600000", "cleanup.policy": "delete"}),
    NewTopic("bad-config", num_partitions=1, config={"compression.type": "zstd"}),
    NewTopic("replicated", num_partitions=1, replication_factor=3),
]))
if made["orders"] is not None:
    failures.append(f"orders: {made['orders']}")
if made["bad-config"] is None or made["bad-config"].code() != 40:
    failures.append(f"an unsupported config was not refused: {made['bad-config']}")
elif "compression.type" not in made["bad-config"].str():
    failures.append(f"the refusal does not name the config: {made['bad-config'].str()}")
if made["replicated"] is None or made["replicated"].code() != 38:
    failures.append(f"replication factor 3 was not refused: {made['replicated']}")

again = outcome(admin.create_topics([NewTopic("orders", num_partitions=1)]))
if again["orders"] is None or again["orders"].code() != 36:
    failures.append(f"a second create was not TOPIC_ALREADY_EXISTS: {again['orders']}")

dry = outcome(admin.create_topics([NewTopic("dry", num_partitions=2)], validate_only=True))
if dry["dry"] is not None:
    failures.append(f"validate_only: {dry['dry']}")

topics = admin.list_topics(timeout=20).topics
if "orders" not in topics or len(topics["orders"].partitions) != 3:
    failures.append(f"orders in metadata: {topics.get('orders')}")
if "dry" in topics:
    failures.append("validate_only made the topic")

gone = outcome(admin.delete_topics(["orders"]))
if gone["orders"] is not None:
    failures.append(f"delete: {gone['orders']}")
missing = outcome(admin.delete_topics(["never-made"]))
if missing["never-made"] is None or missing["never-made"].code() != 3:
    failures.append(f"deleting a missing topic: {missing['never-made']}")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("ok")
