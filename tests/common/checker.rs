//! A queue checker in the manner of Jepsen's: every message a test sends
//! names its producer and sequence number and carries a checksum; each send
//! ends `ok` (acknowledged at an offset), `fail` (a typed error: definitely
//! not stored) or `unknown` (a timeout, a dropped connection, or an error
//! that leaves the outcome open). After recovery the test reads the whole
//! log and [`check`] counts every way it can be wrong.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

/// How one send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok(u64),
    Fail,
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub producer: u32,
    pub seq: u64,
    pub outcome: Outcome,
}

/// The value of message `seq` of `producer`, padded to about `size` bytes:
/// `p<producer> s<seq> <padding> c<crc32c of what precedes " c">`.
pub fn message(producer: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut body = format!("p{producer} s{seq} ").into_bytes();
    let pad = size.saturating_sub(body.len() + 10);
    body.extend((0..pad).map(|i| b'a' + ((seq as usize + i) % 26) as u8));
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(format!(" c{crc:08x}").as_bytes());
    body
}

/// The producer and sequence a value names, if its checksum holds.
pub fn parse(value: &[u8]) -> Option<(u32, u64)> {
    let split = value.len().checked_sub(10)?;
    let (body, tail) = value.split_at(split);
    let crc = u32::from_str_radix(std::str::from_utf8(tail.strip_prefix(b" c")?).ok()?, 16).ok()?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut words = text.split(' ');
    let producer = words.next()?.strip_prefix('p')?.parse().ok()?;
    let seq = words.next()?.strip_prefix('s')?.parse().ok()?;
    Some((producer, seq))
}

/// Everything the checker counts. All but `acked`, `failed`, `unknown`,
/// `stored` and `unknown_stored` must be zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Records read back.
    pub stored: u64,
    /// Unknown sends that turned out to be stored.
    pub unknown_stored: u64,
    /// Acknowledged but absent.
    pub lost: u64,
    /// One message at more than one offset.
    pub duplicate: u64,
    /// An acknowledged offset holding another message.
    pub inconsistent_offset: u64,
    /// Failed but present.
    pub failed_but_visible: u64,
    /// Offsets missing inside the log's range.
    pub gap: u64,
    /// Records whose checksum fails, or that no one sent.
    pub corrupt_served: u64,
    /// A producer's messages stored out of send order.
    pub order: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicate == 0
            && self.inconsistent_offset == 0
            && self.failed_but_visible == 0
            && self.gap == 0
            && self.corrupt_served == 0
            && self.order == 0
    }

    pub fn add(&mut self, o: &Report) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.failed += o.failed;
        self.unknown += o.unknown;
        self.stored += o.stored;
        self.unknown_stored += o.unknown_stored;
        self.lost += o.lost;
        self.duplicate += o.duplicate;
        self.inconsistent_offset += o.inconsistent_offset;
        self.failed_but_visible += o.failed_but_visible;
        self.gap += o.gap;
        self.corrupt_served += o.corrupt_served;
        self.order += o.order;
    }

    /// One JSON line of figures, tagged with the test and mode.
    pub fn json(&self, test: &str, mode: &str, trials: u64) -> String {
        format!(
            "{{\"test\":\"{test}\",\"mode\":\"{mode}\",\"trials\":{trials},\"sent\":{},\"acked\":{},\"failed\":{},\"unknown\":{},\"stored\":{},\"unknown_stored\":{},\"lost\":{},\"duplicate\":{},\"inconsistent_offset\":{},\"failed_but_visible\":{},\"gap\":{},\"corrupt_served\":{},\"order\":{}}}",
            self.sent,
            self.acked,
            self.failed,
            self.unknown,
            self.stored,
            self.unknown_stored,
            self.lost,
            self.duplicate,
            self.inconsistent_offset,
            self.failed_but_visible,
            self.gap,
            self.corrupt_served,
            self.order
        )
    }
}

/// Checks what was sent against what the log holds: `records` are
/// `(offset, value)` read from `log_start` to the end, in offset order.
/// Acknowledged offsets below `log_start` (deleted by retention) are not
/// counted as lost.
pub fn check(sent: &[Sent], records: &[(u64, Vec<u8>)], log_start: u64) -> Report {
    let mut r = Report {
        sent: sent.len() as u64,
        stored: records.len() as u64,
        ..Report::default()
    };
    let mut at: HashMap<(u32, u64), Vec<u64>> = HashMap::new();
    let mut by_offset: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    let mut expected = log_start;
    for (offset, value) in records {
        if *offset != expected {
            r.gap += offset.saturating_sub(expected);
        }
        expected = offset + 1;
        match parse(value) {
            Some(id) => {
                at.entry(id).or_default().push(*offset);
                by_offset.insert(*offset, id);
            }
            None => r.corrupt_served += 1,
        }
    }
    let sent_ids: HashMap<(u32, u64), Outcome> = sent
        .iter()
        .map(|s| ((s.producer, s.seq), s.outcome))
        .collect();
    for (id, offsets) in &at {
        if offsets.len() > 1 {
            r.duplicate += offsets.len() as u64 - 1;
        }
        if !sent_ids.contains_key(id) {
            r.corrupt_served += offsets.len() as u64;
        }
    }
    for s in sent {
        let id = (s.producer, s.seq);
        match s.outcome {
            Outcome::Ok(offset) => {
                r.acked += 1;
                if offset < log_start {
                    continue;
                }
                match by_offset.get(&offset) {
                    Some(found) if *found == id => {}
                    Some(_) => r.inconsistent_offset += 1,
                    None => r.lost += 1,
                }
            }
            Outcome::Fail => {
                r.failed += 1;
                if at.contains_key(&id) {
                    r.failed_but_visible += 1;
                }
            }
            Outcome::Unknown => {
                r.unknown += 1;
                if at.contains_key(&id) {
                    r.unknown_stored += 1;
                }
            }
        }
    }
    // Each producer sends in order on one connection: its messages must be
    // stored in that order.
    let mut last: HashMap<u32, u64> = HashMap::new();
    for (producer, seq) in by_offset.values() {
        if let Some(prev) = last.insert(*producer, *seq) {
            if *seq < prev {
                r.order += 1;
            }
        }
    }
    r
}

/// The checker checks itself: each kind of wrong is counted.
pub fn self_test() {
    let m = |p, s| message(p, s, 40);
    assert_eq!(parse(&m(3, 99)), Some((3, 99)));
    let mut bad = m(1, 1);
    bad[3] ^= 1;
    assert_eq!(parse(&bad), None);
    let sent = [
        Sent {
            producer: 1,
            seq: 0,
            outcome: Outcome::Ok(0),
        },
        Sent {
            producer: 1,
            seq: 1,
            outcome: Outcome::Ok(1),
        },
        Sent {
            producer: 1,
            seq: 2,
            outcome: Outcome::Fail,
        },
        Sent {
            producer: 1,
            seq: 3,
            outcome: Outcome::Unknown,
        },
    ];
    let clean = check(&sent, &[(0, m(1, 0)), (1, m(1, 1)), (2, m(1, 3))], 0);
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!(clean.unknown_stored, 1);
    let lost = check(&sent, &[(0, m(1, 0))], 0);
    assert_eq!(lost.lost, 1);
    let wrong = check(
        &sent,
        &[
            (0, m(1, 0)),
            (1, m(1, 3)),
            (2, m(1, 2)),
            (3, bad),
            (5, m(1, 0)),
        ],
        0,
    );
    assert_eq!(wrong.inconsistent_offset, 1);
    assert_eq!(wrong.failed_but_visible, 1);
    assert_eq!(wrong.corrupt_served, 1);
    assert_eq!(wrong.gap, 1);
    assert_eq!(wrong.duplicate, 1);
    assert!(wrong.order >= 1);
}
