"""confluent-kafka 2.16 (librdkafka) group consumers against Spool's Kafka
listener, with the cooperative-sticky assignor (incremental rebalances)
or range.

usage: confluent_groups.py ADDR TOPIC share|resume [ASSIGNOR]

share: as kafka_python_groups.py: a and b split a 4-partition topic, c
joins, b leaves, every record taken once; committed offsets and their
metadata read back; then a static member (group.instance.id) restarts and
gets its partitions back without anyone else's changing hands.
resume (after the broker restarted): a new member starts where the
commits say.
"""

import sys

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from groups_common import PARTITIONS, Member, Taken, resume, owners, share, values, wait_for

addr, topic, phase = sys.argv[1], sys.argv[2], sys.argv[3]
assignor = sys.argv[4] if len(sys.argv) > 4 else "cooperative-sticky"
group = f"{topic}-group"
taken = Taken()
assigned = {}


def produce(per_partition, start):
    p = Producer({"bootstrap.servers": addr})
    for partition, value in values(per_partition, start):
        p.produce(topic, value=value, partition=partition)
    assert p.flush(30) == 0


def member(name, instance=None):
    conf = {
        "bootstrap.servers": addr,
        "group.id": group,
        "client.id": f"member-{name}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "partition.assignment.strategy": assignor,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
    }
    if instance:
        conf["group.instance.id"] = instance
    c = Consumer(conf)
    c.subscribe([topic])

    def poll_once():
        m = c.poll(0.1)
        assigned[name] = {tp.partition for tp in c.assignment()}
        if m is None or m.error():
            return
        try:
            tp = TopicPartition(topic, m.partition(), m.offset() + 1, metadata=f"by-{name}")
            c.commit(offsets=[tp], asynchronous=False)
        except KafkaException:
            # The partition moved in a rebalance: not taken here.
            return
        taken.add(name, m.partition(), m.offset(), m.value())

    member = Member(name, poll_once, c.close)
    member.start()
    return member


if phase == "share":
    admin = AdminClient({"bootstrap.servers": addr})
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        f.result(30)
    share(taken, assigned, member, produce)
    # Committed offsets, with their metadata, through a fresh consumer.
    probe = Consumer({"bootstrap.servers": addr, "group.id": group})
    committed = probe.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
    probe.close()
    for tp in committed:
        assert tp.offset == 75, tp
        assert tp.metadata and tp.metadata.startswith("by-"), tp
    groups = admin.list_consumer_groups().result(30)
    listed = {g.group_id: g for g in groups.valid}
    assert group in listed, listed
    described = admin.describe_consumer_groups([group])[group].result(30)
    assert described.members == [], described
    # A static member and a dynamic one; the static one restarts (closing
    # without leaving, as static members do) and is back in its place.
    s1, d = member("s1", instance="static-1"), member("d")
    wait_for("s1 and d to split the partitions", lambda: owners(assigned) and len(assigned.get("s1", ())) == 2)
    before = dict(assigned)
    s1.stop()
    s2 = member("s2", instance="static-1")
    wait_for("the restarted static member's partitions", lambda: assigned.get("s2"))
    assert assigned["s2"] == before["s1"], (assigned, before)
    assert assigned["d"] == before["d"], (assigned, before)
    s2.stop()
    d.stop()
elif phase == "resume":
    resume(taken, member, produce)
else:
    raise SystemExit(f"unknown phase {phase}")
print("ok")
