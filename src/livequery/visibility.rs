//! Which committed transactions a snapshot already saw, decided by transaction id
//! (`pg_current_snapshot()`), not by WAL position: commit order in the WAL and visibility order
//! can differ, so an LSN read beside the snapshot cannot tell a transaction that committed just
//! before the snapshot from one that committed just after.

use std::collections::HashSet;

/// `pg_current_snapshot()` of a snapshot's transaction: every xid below `xmin` had finished,
/// every xid from `xmax` on had not started, and between them exactly the `running` ones had not
/// finished. Xids are full 64-bit (`xid8`, epoch included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidSnapshot {
    xmin: u64,
    xmax: u64,
    running: HashSet<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable pg_snapshot {0:?}")]
pub struct SnapshotParseError(pub String);

impl XidSnapshot {
    /// Parses the text form `xmin:xmax:xip,xip,…` (the list may be empty).
    pub fn parse(text: &str) -> Result<XidSnapshot, SnapshotParseError> {
        let err = || SnapshotParseError(text.to_owned());
        let mut parts = text.splitn(3, ':');
        let (Some(xmin), Some(xmax), Some(list)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        let xmin: u64 = xmin.parse().map_err(|_| err())?;
        let xmax: u64 = xmax.parse().map_err(|_| err())?;
        let running = list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().map_err(|_| err()))
            .collect::<Result<HashSet<u64>, _>>()?;
        if xmin > xmax {
            return Err(err());
        }
        Ok(XidSnapshot {
            xmin,
            xmax,
            running,
        })
    }

    /// Whether the committed transaction with this (32-bit, as pgoutput sends it) xid was
    /// visible to the snapshot. The epoch is the one that puts the xid nearest to `xmax`: live
    /// xids are never more than 2^31 apart (PostgreSQL's wraparound protection).
    pub fn saw(&self, xid: u32) -> bool {
        let full = self.widen(xid);
        if full < self.xmin {
            return true;
        }
        full < self.xmax && !self.running.contains(&full)
    }

    fn widen(&self, xid: u32) -> u64 {
        let epoch = self.xmax >> 32;
        let candidate = (epoch << 32) | u64::from(xid);
        let half = 1u64 << 31;
        if candidate > self.xmax.saturating_add(half) && epoch > 0 {
            candidate - (1 << 32)
        } else if candidate.saturating_add(half) < self.xmax {
            candidate + (1 << 32)
        } else {
            candidate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_by_xid() {
        let s = XidSnapshot::parse("100:105:100,103").unwrap();
        assert!(s.saw(99), "finished before xmin");
        assert!(!s.saw(100), "running");
        assert!(s.saw(101));
        assert!(s.saw(102));
        assert!(!s.saw(103), "running");
        assert!(s.saw(104));
        assert!(!s.saw(105), "started after");
        assert!(!s.saw(4000));
        let empty = XidSnapshot::parse("7:7:").unwrap();
        assert!(empty.saw(6));
        assert!(!empty.saw(7));
    }

    #[test]
    fn epochs() {
        let base = 3u64 << 32;
        let s = XidSnapshot::parse(&format!("{}:{}:", base + 5, base + 10)).unwrap();
        assert!(s.saw(6));
        assert!(!s.saw(11));
        // Just before the epoch boundary: 0xFFFF_FFF0 of the previous epoch was long finished.
        let s = XidSnapshot::parse(&format!("{}:{}:", base + 2, base + 10)).unwrap();
        assert!(s.saw(0xFFFF_FFF0));
        // Just after: xmax in the old epoch, the xid wrapped into the next one.
        let s = XidSnapshot::parse(&format!("{}:{}:", base - 10, base - 5)).unwrap();
        assert!(!s.saw(3));
        assert!(s.saw(0xFFFF_FFF0));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "1:2", "a:b:", "5:3:", "1:2:x"] {
            assert!(XidSnapshot::parse(bad).is_err(), "{bad}");
        }
    }
}
