"""kafka-python 3.0 group consumers against Spool's Kafka listener.

usage: kafka_python_groups.py ADDR TOPIC share|resume [ASSIGNOR]

share: a topic of 4 partitions; members a and b of group G split it (each
gets partitions, every record taken once); c joins, then b leaves, and the
records produced meanwhile are each taken once too; the group's committed
offsets (with each commit's metadata) are read back by the admin client,
and ListGroups/DescribeGroups show the group.
resume (after the broker restarted): a new member of the same group
starts where the commits say, so nothing taken before is taken again.
expire: a member in another process is killed with SIGKILL; once its
session (6 s) ends, the broker removes it and the member left takes its
partitions.
"""

import os
import signal
import subprocess
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.structs import OffsetAndMetadata

from groups_common import PARTITIONS, Member, Taken, resume, share, values, wait_for

addr, topic, phase = sys.argv[1], sys.argv[2], sys.argv[3]
assignor = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor}[
    sys.argv[4] if len(sys.argv) > 4 else "range"
]
group = f"{topic}-group"
taken = Taken()
# Each member's assignment as of its last poll, written by its own thread.
assigned = {}


def produce(per_partition, start):
    p = KafkaProducer(bootstrap_servers=addr)
    for partition, value in values(per_partition, start):
        p.send(topic, value=value, partition=partition)
    p.flush()
    p.close()


def member(name, session_ms=10000):
    c = KafkaConsumer(
        topic,
        bootstrap_servers=addr,
        group_id=group,
        client_id=f"member-{name}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        partition_assignment_strategy=[assignor],
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=500,
        max_poll_records=20,
    )

    def poll_once():
        polled = c.poll(timeout_ms=100)
        assigned[name] = {tp.partition for tp in c.assignment()}
        for tp, records in polled.items():
            for r in records:
                try:
                    c.commit({tp: OffsetAndMetadata(r.offset + 1, f"by-{name}", -1)})
                except Exception:
                    # A rebalance took the partition: its next owner starts
                    # at the last commit, so this record is not taken here.
                    break
                taken.add(name, r.partition, r.offset, r.value)

    m = Member(name, poll_once, c.close)
    m.start()
    return m




if phase == "share":
    admin = KafkaAdminClient(bootstrap_servers=addr)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    share(taken, assigned, member, produce)
    offsets = admin.list_group_offsets(group)[group]
    for p in range(PARTITIONS):
        got = offsets[TopicPartition(topic, p)]
        assert got.offset == 75, (p, got)
        assert got.metadata.startswith("by-"), got
    groups = {g["group_id"]: g for g in admin.list_groups()}
    assert group in groups, groups
    described = admin.describe_groups([group])[group]
    assert described["group_state"] == "Empty", described
    admin.close()
elif phase == "resume":
    resume(taken, member, produce)
elif phase == "expire":
    KafkaAdminClient(bootstrap_servers=addr).create_topics([NewTopic(topic, PARTITIONS, 1)])
    victim = subprocess.Popen([sys.executable, __file__, addr, topic, "victim", sys.argv[4]])
    try:
        a = member("a")
        wait_for("a to share the partitions", lambda: len(assigned.get("a", ())) == 2)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        wait_for("a to take the killed member's partitions", lambda: len(assigned["a"]) == 4)
        produce(5, 0)
        wait_for("a to take all 20", lambda: taken.count() == 20)
        a.stop()
        taken.check(5)
    finally:
        victim.kill()
elif phase == "victim":
    # Joins, then polls until it is killed (bounded, as every loop here).
    v = member("victim", session_ms=6000)
    wait_for("the kill", lambda: False, timeout=120)
else:
    raise SystemExit(f"unknown phase {phase}")
print("ok")
