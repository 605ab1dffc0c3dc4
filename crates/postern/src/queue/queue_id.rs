//! Queue IDs: the one name of a message in the queue, in file names, logs and the CLI.
//!
//! An ID sorts by time, is safe as a file name, and is unique within this host. This
//! module only makes and checks IDs; it must not touch the disk.

use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Hex digits of the timestamp part: microseconds fit in 14 hex digits until the year
/// 4253, so IDs keep a fixed width and string order stays time order.
const TIME_DIGITS: usize = 14;
/// Hex digits of the counter part.
const COUNTER_DIGITS: usize = 4;
const ID_LEN: usize = TIME_DIGITS + COUNTER_DIGITS;
const TIME_MASK: u64 = (1 << (4 * TIME_DIGITS)) - 1;

/// Process-wide counter that tells apart IDs made in the same microsecond. It starts at
/// a random value so that a restarted process, whose clock may have stepped back, is
/// unlikely to repeat an ID of its predecessor.
static COUNTER: LazyLock<AtomicU32> =
    LazyLock::new(|| AtomicU32::new(u32::from(rand::random::<u16>())));

/// A queue ID, e.g. `0641A2B3C4D5E6F00A`: 14 upper-case hex digits of microseconds since
/// the Unix epoch, then 4 upper-case hex digits of a process-wide counter.
///
/// Deserialising checks the format too, so an envelope read from disk can never carry
/// an ID that would escape the queue directory when used as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueId(String);

impl QueueId {
    /// Makes a new ID from the clock and the process-wide counter.
    pub fn generate() -> QueueId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            // A clock before 1970 is broken; the counter still keeps IDs apart.
            .map_or(0, |d| d.as_micros());
        let micros = (micros as u64) & TIME_MASK;
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
        QueueId(format!("{micros:014X}{counter:04X}"))
    }

    /// Accepts exactly 18 characters from `0-9A-F`; anything else (lower case, path
    /// separators, dots) is refused.
    pub fn parse(s: &str) -> Option<QueueId> {
        let valid = s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
        valid.then(|| QueueId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the ID was made: its first 14 hex digits, microseconds since the Unix epoch.
    /// `None` cannot happen for an ID from `parse` or `generate`; it stands in for a
    /// panic.
    pub fn created_at(&self) -> Option<SystemTime> {
        let micros = u64::from_str_radix(self.0.get(..TIME_DIGITS)?, 16).ok()?;
        UNIX_EPOCH.checked_add(std::time::Duration::from_micros(micros))
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for QueueId {
    type Error = String;

    fn try_from(s: String) -> Result<QueueId, String> {
        QueueId::parse(&s).ok_or_else(|| format!("invalid queue ID {s:?}"))
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_ids_are_unique() {
        let ids: HashSet<QueueId> = (0..10_000).map(|_| QueueId::generate()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn generated_ids_parse_back() {
        let id = QueueId::generate();
        assert_eq!(id.as_str().len(), 18);
        assert_eq!(QueueId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let first = QueueId::generate();
        // A later microsecond, not just a later counter (which wraps): wait for the
        // clock to pass the first ID's time.
        let made = first.created_at().unwrap();
        while SystemTime::now() <= made + std::time::Duration::from_micros(1) {
            std::hint::spin_loop();
        }
        let second = QueueId::generate();
        assert!(first < second, "{first} should sort before {second}");
        assert!(first.as_str() < second.as_str());
    }

    #[test]
    fn created_at_reads_the_time_part() {
        let before = SystemTime::now() - std::time::Duration::from_millis(1);
        let id = QueueId::generate();
        let after = SystemTime::now() + std::time::Duration::from_millis(1);
        let created = id.created_at().unwrap();
        assert!(before <= created && created <= after, "{id}: {created:?}");
        let fixed = QueueId::parse("0000000000000F0001").unwrap();
        assert_eq!(
            fixed.created_at(),
            Some(UNIX_EPOCH + std::time::Duration::from_micros(15))
        );
    }

    #[test]
    fn parse_rejects_bad_ids() {
        for bad in [
            "",
            "../x",
            "../../etc/passwd",
            "0641A2B3C4D5E6F00",
            "0641A2B3C4D5E6F00AB",
            "0641a2b3c4d5e6f00a",
            "0641A2B3C4D5E6F0/A",
            "0641A2B3C4D5E6F0.A",
            "0641A2B3C4D5E6F0GA",
            "0641A2B3C4D5E6F0\u{e9}",
        ] {
            assert_eq!(QueueId::parse(bad), None, "{bad:?} should be refused");
        }
        assert!(QueueId::parse("0641A2B3C4D5E6F00A").is_some());
    }

    #[test]
    fn deserialising_checks_the_format() {
        let ok: QueueId = serde_json::from_str("\"0641A2B3C4D5E6F00A\"").unwrap();
        assert_eq!(ok.to_string(), "0641A2B3C4D5E6F00A");
        assert!(serde_json::from_str::<QueueId>("\"../x\"").is_err());
    }
}
