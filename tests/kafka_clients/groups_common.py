"""What the group scenarios of kafka_python_groups.py and confluent_groups.py
share: members that each run in a thread, record a record only once its
commit succeeded, and the checks on what they recorded.

A record is "taken" by a member when the member's synchronous commit of
the offset after it succeeded. Nothing taken may be taken again (no
partition is consumed by two members at once, and a commit made is where
the next owner starts), and everything produced is taken once the members
catch up.
"""

import threading
import time

PARTITIONS = 4


START = time.monotonic()


def wait_for(what, done, timeout=40.0):
    """Polls done() every 50 ms until it holds; fails after timeout s."""
    print(f"[{time.monotonic() - START:.1f}s] waiting for {what}", flush=True)
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Taken:
    """Every (partition, offset) taken, by whom, in order."""

    def __init__(self):
        self.lock = threading.Lock()
        self.records = []  # (member, partition, offset, value)

    def add(self, member, partition, offset, value):
        with self.lock:
            self.records.append((member, partition, offset, value))

    def count(self):
        with self.lock:
            return len(self.records)

    def members(self):
        with self.lock:
            return {m for m, _, _, _ in self.records}

    def partitions_of(self, member):
        with self.lock:
            return {p for m, p, _, _ in self.records if m == member}

    def check(self, per_partition, start=0):
        """Each partition's offsets start..start+per_partition taken once,
        in order, with the values produced for them."""
        with self.lock:
            seen = {}
            for member, p, o, value in self.records:
                assert (p, o) not in seen, f"{p}@{o} taken by {seen[(p, o)]} and {member}"
                seen[(p, o)] = member
                assert value == f"{p}-{o}".encode(), (p, o, value)
            for p in range(PARTITIONS):
                offsets = sorted(o for q, o in seen if q == p)
                want = list(range(start, start + per_partition))
                assert offsets == want, f"partition {p}: {offsets[:5]}.. not {want[:5]}.."


class Member(threading.Thread):
    """Runs poll_once() until stopped; poll_once records what it takes."""

    def __init__(self, name, poll_once, close):
        super().__init__(daemon=True)
        self.name_ = name
        self.poll_once = poll_once
        self.close = close
        self.stopping = threading.Event()
        self.error = None

    def run(self):
        try:
            # Bounded: a member that never stops fails the scenario's waits.
            for _ in range(100000):
                if self.stopping.is_set():
                    break
                self.poll_once()
        except Exception as e:  # reported by stop()
            self.error = e
        finally:
            self.close()

    def stop(self):
        self.stopping.set()
        print(f"[{time.monotonic() - START:.1f}s] stopping {self.name_}", flush=True)
        self.join(30)
        assert not self.is_alive(), f"{self.name_} did not stop"
        if self.error:
            raise self.error


def values(n, start):
    """The value of each record produced: PARTITION-OFFSET."""
    return [(p, f"{p}-{o}".encode()) for o in range(start, start + n) for p in range(PARTITIONS)]


def owners(assigned):
    """Whether every partition is assigned, to one member each (from each
    member's assignment as of its last poll)."""
    every = [p for ps in list(assigned.values()) for p in ps]
    return sorted(every) == list(range(PARTITIONS))


def share(taken, assigned, member, produce):
    """The scenario both clients run: a and b split the partitions and take
    the first 100 records; c joins and gets partitions of its own; b
    leaves and a and c take its partitions; every record is taken once.
    member(name) starts a Member that keeps assigned[name] current;
    produce(n, start) writes n records per partition from offset start."""
    a, b = member("a"), member("b")
    wait_for("a and b to split the partitions", lambda: owners(assigned) and len(assigned.get("a", ())) == 2)
    produce(25, 0)
    wait_for("a and b to take the first 100", lambda: taken.count() == 100)
    assert taken.members() == {"a", "b"}, taken.members()
    c = member("c")
    wait_for("c to get partitions", lambda: assigned.get("c") and owners(assigned))
    produce(25, 25)
    wait_for("200 taken", lambda: taken.count() == 200)
    assert "c" in taken.members()
    b.stop()
    del assigned["b"]
    wait_for("a and c to take b's partitions", lambda: owners(assigned))
    produce(25, 50)
    wait_for("300 taken", lambda: taken.count() == 300)
    taken.check(75)
    a.stop()
    c.stop()
    assigned.clear()


def resume(taken, member, produce):
    """After the broker restarted on the data `share` left: a new member
    of the group starts at the commits (75 per partition), so it takes the
    10 per partition produced since, and nothing taken before."""
    produce(10, 75)
    r = member("r")
    wait_for("the 40 produced since", lambda: taken.count() == 40)
    r.stop()
    taken.check(10, start=75)
