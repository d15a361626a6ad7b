"""confluent-kafka's AdminClient against Spool's Kafka listener: create a
topic with partitions and mapped configs, refuse an unsupported config and
a replication factor above 1, list it in metadata, validate only; describe
its configs and the broker's, alter them (whole and incremental), add
partitions, describe the cluster, delete it.
Run by tests/kafka.rs with the listener's address; exits non-zero, with the
reason, on any mismatch."""

import sys

from confluent_kafka import KafkaException
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                  ConfigResource, ConfigSource, NewPartitions,
                                  NewTopic, ResourceType)

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
             config={"retention.ms": "3600000", "cleanup.policy": "delete",
                     "compression.type": "producer"}),
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



def configs(resource):
    """A resource's configs as {name: ConfigEntry}, or the error."""
    [(_, f)] = admin.describe_configs([resource]).items()
    try:
        return f.result(20)
    except KafkaException as e:
        return e.args[0]


orders = ConfigResource(ResourceType.TOPIC, "orders")
described = configs(orders)
if isinstance(described, dict):
    retention = described.get("retention.ms")
    if retention is None or retention.value != "3600000" \
            or retention.source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value:
        failures.append(f"retention.ms as created: {retention!r}")
    for key in ("retention.bytes", "segment.bytes", "segment.ms", "max.message.bytes",
                "message.timestamp.type", "cleanup.policy", "flush.messages"):
        if key not in described:
            failures.append(f"describe_configs lacks {key}: {sorted(described)}")
    if described.get("retention.bytes") and described["retention.bytes"].value != "-1":
        failures.append(f"retention.bytes by default: {described['retention.bytes'].value}")
    if described.get("cleanup.policy") and not described["cleanup.policy"].is_read_only:
        failures.append("cleanup.policy is not read-only")
else:
    failures.append(f"describe_configs orders: {described}")

broker = configs(ConfigResource(ResourceType.BROKER, "0"))
if not isinstance(broker, dict) or "log.retention.ms" not in broker \
        or "num.partitions" not in broker:
    failures.append(f"describe_configs broker 0: {broker if not isinstance(broker, dict) else sorted(broker)}")
missing_topic = configs(ConfigResource(ResourceType.TOPIC, "never-made"))
if isinstance(missing_topic, dict) or missing_topic.code() != 3:
    failures.append(f"describe_configs of a missing topic: {missing_topic}")


def altered(futures):
    [(_, f)] = futures.items()
    try:
        f.result(20)
        return None
    except KafkaException as e:
        return e.args[0]


# Incremental: set two, then delete one back to its default.
error = altered(admin.incremental_alter_configs([ConfigResource(
    ResourceType.TOPIC, "orders", incremental_configs=[
        ConfigEntry("retention.bytes", "1048576",
                    incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.ms", "600000", incremental_operation=AlterConfigOpType.SET),
    ])]))
if error is not None:
    failures.append(f"incremental SET: {error}")
after = configs(orders)
if not isinstance(after, dict) or after["retention.bytes"].value != "1048576" \
        or after["segment.ms"].value != "600000" or after["retention.ms"].value != "3600000":
    failures.append(f"after incremental SET: {after if not isinstance(after, dict) else {k: v.value for k, v in after.items()}}")
error = altered(admin.incremental_alter_configs([ConfigResource(
    ResourceType.TOPIC, "orders", incremental_configs=[
        ConfigEntry("segment.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ])]))
if error is not None:
    failures.append(f"incremental DELETE: {error}")
after = configs(orders)
if not isinstance(after, dict) or after["segment.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value \
        or after["retention.bytes"].value != "1048576":
    failures.append(f"after incremental DELETE: {after}")
error = altered(admin.incremental_alter_configs([ConfigResource(
    ResourceType.TOPIC, "orders", incremental_configs=[
        ConfigEntry("retention.ms", "abc", incremental_operation=AlterConfigOpType.SET),
    ])]))
if error is None or error.code() != 40 or "retention" not in error.str():
    failures.append(f"a bad value was not refused with INVALID_CONFIG: {error}")
error = altered(admin.incremental_alter_configs([ConfigResource(
    ResourceType.TOPIC, "orders", incremental_configs=[
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
    ])]))
if error is None or error.code() != 40:
    failures.append(f"APPEND to cleanup.policy was not refused: {error}")

# The whole set: what is not given goes back to its default.
error = altered(admin.alter_configs([ConfigResource(
    ResourceType.TOPIC, "orders", set_config={"retention.ms": "7200000"})]))
if error is not None:
    failures.append(f"alter_configs: {error}")
after = configs(orders)
if not isinstance(after, dict) or after["retention.ms"].value != "7200000" \
        or after["retention.bytes"].value != "-1":
    failures.append(f"after alter_configs: {after}")

# Partitions only grow.
[(_, f)] = admin.create_partitions([NewPartitions("orders", 5)]).items()
try:
    f.result(20)
except KafkaException as e:
    failures.append(f"create_partitions to 5: {e.args[0]}")
[(_, f)] = admin.create_partitions([NewPartitions("orders", 2)]).items()
try:
    f.result(20)
    failures.append("create_partitions down to 2 was taken")
except KafkaException as e:
    if e.args[0].code() != 37:
        failures.append(f"create_partitions down to 2: {e.args[0]}")
topics = admin.list_topics(timeout=20).topics
if len(topics["orders"].partitions) != 5:
    failures.append(f"orders after create_partitions: {len(topics['orders'].partitions)} partitions")

cluster = admin.describe_cluster().result(20)
if len(cluster.nodes) != 1 or cluster.controller is None \
        or cluster.controller.id != cluster.nodes[0].id or not cluster.cluster_id:
    failures.append(f"describe_cluster: {cluster.nodes} {cluster.controller} {cluster.cluster_id}")

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
