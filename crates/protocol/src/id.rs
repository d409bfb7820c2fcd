//! Message ids: the room offset the bus assigns to each message atomically with the
//! publish, written `"<ms>-<seq>"` (the Redis stream id format; the memory bus uses the
//! same). Ids of one room are totally ordered: `ms` first, then `seq`.
//!
//! The text form is canonical: each part is `0` or decimal digits without a leading zero
//! or a sign, at most `u64::MAX`. Parsing accepts exactly what [`MsgId`]'s `Display`
//! writes, so an id read back is written byte for byte as it came (`"05-1"` or `"+5-1"`
//! would otherwise parse to the id written `"5-1"`, and two spellings of one offset could
//! reach a cursor, a log line or an idempotency record).

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
        f.write_str(
            "a message id looks like \"<ms>-<seq>\": two decimal numbers without sign or leading zeros",
        )
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

    /// Accepts only the canonical form (see the module docs).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(InvalidId)?;
        Ok(MsgId {
            ms: parse_part(ms)?,
            seq: parse_part(seq)?,
        })
    }
}

/// One part of an id: `0`, or ASCII digits without a leading zero, that fits `u64`.
/// (`u64::from_str` alone would also take a leading `+` and leading zeros.)
fn parse_part(s: &str) -> Result<u64, InvalidId> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(InvalidId);
    }
    s.parse().map_err(|_| InvalidId)
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
    fn only_the_canonical_form_parses() {
        for bad in [
            "+5-1",
            "5-+1",
            "-5-1",
            "5--1",
            "05-1",
            "5-01",
            "00-0",
            "0-00",
            "007-7",
            " 5-1",
            "5-1 ",
            "5 -1",
            "5-1-2",
            "-",
            "",
            "5-",
            "-1",
            "1_0-0",
            "\u{0661}-0",
            "0x5-1",
            "18446744073709551616-0",
            "0-18446744073709551616",
        ] {
            assert_eq!(bad.parse::<MsgId>(), Err(InvalidId), "{bad:?}");
            assert!(
                serde_json::from_str::<MsgId>(&format!("{bad:?}")).is_err(),
                "{bad:?}"
            );
        }
        for good in [
            "0-0",
            "0-7",
            "5-0",
            "10-10",
            "18446744073709551615-18446744073709551615",
        ] {
            let id: MsgId = good.parse().expect(good);
            assert_eq!(id.to_string(), good);
        }
    }

    #[test]
    fn ids_are_json_strings() {
        let id = MsgId { ms: 17, seq: 2 };
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"17-2\"");
        assert_eq!(serde_json::from_str::<MsgId>("\"17-2\"").unwrap(), id);
        assert!(serde_json::from_str::<MsgId>("\"17\"").is_err());
    }
}

#[cfg(test)]
mod proptests {
    use std::cmp::Ordering;

    use proptest::prelude::*;

    use super::*;

    /// The client library's `compareIds` (clients/js/src/protocol.ts): `<ms>-<seq>` of
    /// 1-20 digits each, compared as big integers, `ms` first; anything else as strings.
    fn compare_ids(a: &str, b: &str) -> Ordering {
        fn parse_id(id: &str) -> Option<(u128, u128)> {
            let (ms, seq) = id.split_once('-')?;
            let digits =
                |s: &str| (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(ms) || !digits(seq) {
                return None;
            }
            Some((ms.parse().ok()?, seq.parse().ok()?))
        }
        match (parse_id(a), parse_id(b)) {
            (Some(pa), Some(pb)) => pa.cmp(&pb),
            _ => a.cmp(b),
        }
    }

    /// Ids that often share `ms` (and sometimes `seq`), so ties are exercised, plus the
    /// extremes.
    fn id() -> impl Strategy<Value = MsgId> {
        let part = prop_oneof![0..4u64, any::<u64>(), Just(u64::MAX)];
        (part.clone(), part).prop_map(|(ms, seq)| MsgId { ms, seq })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn ordering_agrees_with_ms_then_seq(a in id(), b in id()) {
            prop_assert_eq!(a.cmp(&b), (a.ms, a.seq).cmp(&(b.ms, b.seq)));
            prop_assert_eq!(a == b, a.ms == b.ms && a.seq == b.seq);
        }

        #[test]
        fn display_then_parse_is_identity(id in id()) {
            let text = id.to_string();
            prop_assert_eq!(text.parse::<MsgId>(), Ok(id));
            // Canonical: decimal digits without sign or leading zeros, one dash.
            let (ms, seq) = text.split_once('-').expect("one dash");
            prop_assert_eq!(ms, id.ms.to_string());
            prop_assert_eq!(seq, id.seq.to_string());
            let json = serde_json::to_string(&id).expect("serialises");
            prop_assert_eq!(serde_json::from_str::<MsgId>(&json).ok(), Some(id));
        }

        #[test]
        fn wire_form_sorts_like_the_client_library(a in id(), b in id()) {
            prop_assert_eq!(compare_ids(&a.to_string(), &b.to_string()), a.cmp(&b));
        }

        #[test]
        fn what_the_client_library_reads_parses_to_the_same_id(ms in "[0-9]{1,20}", seq in "[0-9]{1,20}") {
            // Any canonical id the client can compare and that fits u64 reads the same
            // here. The client also reads non-canonical digits (`"05-1"` as 5 and 1),
            // which the gateway never writes and refuses to read.
            let text = format!("{ms}-{seq}");
            let canonical = |p: &str| p == "0" || !p.starts_with('0');
            match (ms.parse::<u64>(), seq.parse::<u64>()) {
                (Ok(m), Ok(s)) if canonical(&ms) && canonical(&seq) => {
                    prop_assert_eq!(text.parse::<MsgId>(), Ok(MsgId { ms: m, seq: s }));
                }
                _ => prop_assert_eq!(text.parse::<MsgId>(), Err(InvalidId)),
            }
        }

        #[test]
        fn next_is_the_following_offset(id in id(), now in prop_oneof![0..4u64, any::<u64>()]) {
            prop_assume!(id.seq < u64::MAX);
            let next = id.next(now);
            prop_assert!(next > id);
            prop_assert_eq!(next.ms, id.ms.max(now));
            prop_assert_eq!(next.seq, if now > id.ms { 0 } else { id.seq + 1 });
        }

        #[test]
        fn parse_never_panics_and_accepts_only_ids(text in "[-+0-9a ]{0,24}") {
            if let Ok(id) = text.parse::<MsgId>() {
                prop_assert!(text.contains('-'));
                prop_assert_eq!(id.to_string().parse::<MsgId>(), Ok(id));
                // Canonical: what is accepted is written back byte for byte.
                prop_assert_eq!(id.to_string(), text);
            }
        }

        #[test]
        fn an_accepted_id_is_written_back_byte_for_byte(
            ms in prop_oneof!["0", "[1-9][0-9]{0,2}", "[+0-9][0-9]{0,20}"],
            seq in prop_oneof!["0", "[1-9][0-9]{0,2}", "[+0-9][0-9]{0,20}"],
        ) {
            // Parts at and near the canonical form: leading zeros, a `+`, past u64::MAX.
            let text = format!("{ms}-{seq}");
            let canonical = |p: &str| {
                p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0'))
                    && p.parse::<u64>().is_ok()
            };
            let expected = canonical(&ms) && canonical(&seq);
            match text.parse::<MsgId>() {
                Ok(id) => {
                    prop_assert!(expected, "accepted {}", text);
                    prop_assert_eq!(id.to_string(), text);
                }
                Err(InvalidId) => prop_assert!(!expected, "refused {}", text),
            }
        }
    }
}
