//! [`Position`]: where one db event sits in the stream — its transaction's commit LSN and its
//! index among that transaction's document events. Positions order events within and across
//! transactions; `since` names one (PROTOCOL.md §8).

use std::fmt;
use std::str::FromStr;
use walcast_replication::Lsn;

/// `commit` orders transactions, `index` the events inside one. A plain commit LSN (no index)
/// stands for "after the whole transaction": [`Position::after_transaction`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Position {
    pub commit: Lsn,
    pub index: u32,
}

impl Position {
    /// Past every event of the transaction committed at `commit`.
    pub fn after_transaction(commit: Lsn) -> Position {
        Position {
            commit,
            index: u32::MAX,
        }
    }

    pub fn new(commit: Lsn, index: usize) -> Position {
        Position {
            commit,
            // A transaction of 2^32 document events cannot be assembled in memory.
            index: u32::try_from(index).unwrap_or(u32::MAX - 1),
        }
    }
}

/// Text form: `<commit LSN>:<index>` (`0/15EB7C8:9`), or the bare LSN for
/// [`Position::after_transaction`].
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == u32::MAX {
            write!(f, "{}", self.commit)
        } else {
            write!(f, "{}:{}", self.commit, self.index)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {0:?}: expected X/Y or X/Y:index")]
pub struct ParsePositionError(pub String);

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_owned());
        match s.split_once(':') {
            None => Ok(Position::after_transaction(s.parse().map_err(|_| err())?)),
            Some((lsn, index)) => {
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                let index: u32 = index.parse().map_err(|_| err())?;
                if index == u32::MAX {
                    return Err(err());
                }
                Ok(Position {
                    commit: lsn.parse().map_err(|_| err())?,
                    index,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_orders() {
        let p = Position::new(Lsn(0x15E_B7C8), 9);
        assert_eq!(p.to_string(), "0/15EB7C8:9");
        assert_eq!("0/15EB7C8:9".parse::<Position>(), Ok(p));
        let whole: Position = "0/15EB7C8".parse().unwrap();
        assert_eq!(whole, Position::after_transaction(Lsn(0x15E_B7C8)));
        assert_eq!(whole.to_string(), "0/15EB7C8");
        assert!(
            p < whole,
            "an event orders before the end of its transaction"
        );
        assert!(whole < Position::new(Lsn(0x15E_B7C9), 0));
        assert!(Position::new(Lsn(1), 2) < Position::new(Lsn(1), 10));
    }

    #[test]
    fn garbage_is_refused() {
        for s in [
            "",
            ":",
            "0/1:",
            "0/1:x",
            "0/1:-1",
            "0/1:+1",
            "x:1",
            "0/1:4294967295",
            "0/1:99999999999",
            "0/1:1:2",
        ] {
            assert!(s.parse::<Position>().is_err(), "{s}");
        }
    }
}
