"""kafka-python 3.0's KafkaAdminClient against Spool's Kafka listener:
create topics (with configs, refused configs, validate only), describe a
topic's and the broker's configs, alter them (incremental, whole, reset),
add partitions, describe the cluster, delete. Run by tests/kafka.rs with
the listener's address; exits non-zero, with the reasons, on any mismatch."""

import sys

from kafka import errors as Errors
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=20000)
failures = []

made = admin.create_topics(
    {"kp-admin": {"num_partitions": 2, "configs": {"retention.ms": "3600000"}},
     "kp-refused": {"num_partitions": 1, "configs": {"min.compaction.lag.ms": "10"}}},
    raise_errors=False)
codes = {t["name"]: (t["error_code"], t["error_message"]) for t in made["topics"]}
if codes["kp-admin"][0] != 0:
    failures.append(f"create kp-admin: {codes['kp-admin']}")
if codes["kp-refused"][0] != 40 or "min.compaction.lag.ms" not in (codes["kp-refused"][1] or ""):
    failures.append(f"an unsupported config was not refused by name: {codes['kp-refused']}")
if made["topics"][0].get("num_partitions", 2) != 2:
    failures.append(f"create answered {made['topics'][0]}")
try:
    admin.create_topics({"kp-admin": {"num_partitions": 1}})
    failures.append("a second create was taken")
except Errors.TopicAlreadyExistsError:
    pass

admin.create_topics({"kp-dry": {"num_partitions": 1}}, validate_only=True)
if "kp-dry" in admin.list_topics():
    failures.append("validate_only made the topic")

topic = ConfigResource(ConfigResourceType.TOPIC, "kp-admin")


def described(resource=topic, config_filter="all"):
    out = admin.describe_configs([resource], config_filter=config_filter)
    return out[resource.resource_type.name.lower()][resource.name]


every = described()
for key in ("retention.ms", "retention.bytes", "segment.bytes", "segment.ms",
            "max.message.bytes", "message.timestamp.type", "cleanup.policy"):
    if key not in every:
        failures.append(f"describe_configs lacks {key}: {sorted(every)}")
modified = described(config_filter="modified")
if set(modified) != {"retention.ms"} or modified["retention.ms"]["value"] != "3600000":
    failures.append(f"modified configs after create: {modified}")
broker = described(ConfigResource(ConfigResourceType.BROKER, "0"))
if broker.get("log.retention.ms", {}).get("value") is None:
    failures.append(f"broker configs: {sorted(broker)}")

# Incremental (kafka-python's choice when the broker offers it): set one, the
# other set config stays.
result = admin.alter_configs([ConfigResource(
    ConfigResourceType.TOPIC, "kp-admin", {"retention.bytes": "1048576"})])
if result["topic"]["kp-admin"] != "OK":
    failures.append(f"incremental alter: {result}")
modified = described(config_filter="modified")
if {k: v["value"] for k, v in modified.items()} != {
        "retention.ms": "3600000", "retention.bytes": "1048576"}:
    failures.append(f"after incremental alter: {modified}")

# The old whole-set AlterConfigs: kafka-python fills in the other modified
# keys itself, so the set stays as it was plus the change.
result = admin.alter_configs([ConfigResource(
    ConfigResourceType.TOPIC, "kp-admin", {"segment.ms": "600000"})], incremental=False)
if result["topic"]["kp-admin"] != "OK":
    failures.append(f"whole alter: {result}")
modified = described(config_filter="modified")
if {k: v["value"] for k, v in modified.items()} != {
        "retention.ms": "3600000", "retention.bytes": "1048576", "segment.ms": "600000"}:
    failures.append(f"after whole alter: {modified}")

result = admin.alter_configs([ConfigResource(
    ConfigResourceType.TOPIC, "kp-admin", {"segment.bytes": "not a size"})])
if "InvalidConfig" not in str(result["topic"]["kp-admin"]):
    failures.append(f"a bad value was not refused with INVALID_CONFIG: {result}")

result = admin.reset_configs([ConfigResource(
    ConfigResourceType.TOPIC, "kp-admin", ["retention.bytes", "segment.ms"])])
if result["topic"]["kp-admin"] != "OK":
    failures.append(f"reset: {result}")
modified = described(config_filter="modified")
if set(modified) != {"retention.ms"}:
    failures.append(f"after reset: {modified}")

admin.create_partitions({"kp-admin": 4})
partitions = admin.describe_topics(["kp-admin"])[0]["partitions"]
if len(partitions) != 4:
    failures.append(f"after create_partitions: {len(partitions)} partitions")
try:
    admin.create_partitions({"kp-admin": 3})
    failures.append("create_partitions down to 3 was taken")
except Errors.InvalidPartitionsError:
    pass
try:
    admin.create_partitions({"kp-never-made": 3})
    failures.append("create_partitions of a missing topic was taken")
except Errors.UnknownTopicOrPartitionError:
    pass

cluster = admin.describe_cluster()
if len(cluster["brokers"]) != 1 or cluster["controller_id"] != cluster["brokers"][0]["broker_id"] \
        or not cluster["cluster_id"]:
    failures.append(f"describe_cluster: {cluster}")

admin.delete_topics(["kp-admin"])
if "kp-admin" in admin.list_topics():
    failures.append("kp-admin is listed after its delete")
try:
    admin.delete_topics(["kp-never-made"])
    failures.append("deleting a missing topic was taken")
except Errors.UnknownTopicOrPartitionError:
    pass

admin.close()
if failures:
    print("\n".join(failures))
    sys.exit(1)
print("ok")
