//! Message ids: the room offset the bus assigns to each message atomically with the
//! publish, written `"<ms>-<seq>"` (the Redis stream id format; the memory bus uses the
//! same). Ids of one room are totally ordered: `ms` first, then `seq`.

use std::fmt;
use std::str::FromStr;

/// A message id (room offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MsgId {
    pub ms: u64,
    pub seq: u64,
}

/// A string that is not a message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId;

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message id looks like \"<ms>-<seq>\"")
    }
}

impl std::error::Error for InvalidId {}

impl MsgId {
    /// The id before any message; a room with no message has this head.
    pub const ZERO: MsgId = MsgId { ms: 0, seq: 0 };

    /// The next id after `self` at time `now_ms`, as Redis assigns them.
    pub fn next(self, now_ms: u64) -> MsgId {
        if now_ms > self.ms {
            MsgId { ms: now_ms, seq: 0 }
        } else {
            MsgId {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for MsgId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(InvalidId)?;
        Ok(MsgId {
            ms: ms.parse().map_err(|_| InvalidId)?,
            seq: seq.parse().map_err(|_| InvalidId)?,
        })
    }
}

impl serde::Serialize for MsgId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MsgId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_round_trip() {
        let a: MsgId = "5-1".parse().unwrap();
        let b: MsgId = "5-10".parse().unwrap();
        let c: MsgId = "6-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "5-10");
        assert_eq!("5".parse::<MsgId>(), Err(InvalidId));
        assert_eq!("a-1".parse::<MsgId>(), Err(InvalidId));
        assert_eq!("1-".parse::<MsgId>(), Err(InvalidId));
        assert_eq!(MsgId { ms: 5, seq: 3 }.next(5), MsgId { ms: 5, seq: 4 });
        assert_eq!(MsgId { ms: 5, seq: 3 }.next(4), MsgId { ms: 5, seq: 4 });
        assert_eq!(MsgId { ms: 5, seq: 3 }.next(9), MsgId { ms: 9, seq: 0 });
    }

    #[test]
    fn ids_are_json_strings() {
        let id = MsgId { ms: 17, seq: 2 };
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"17-2\"");
        assert_eq!(serde_json::from_str::<MsgId>("\"17-2\"").unwrap(), id);
        assert!(serde_json::from_str::<MsgId>("\"17\"").is_err());
    }
}
