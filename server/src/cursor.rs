//! The opaque cursors of the report's pages (`task.report`'s `next`, `task.files`' `next`): the
//! keys of the last rows given, as JSON in hex. Each page starts after them on an index
//! (keyset), so the millionth page costs what the first one does.

use btp_common::api::ApiError;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::store::PageAt;

/// Where a list of the report goes on: `None` once it was given whole.
pub type Pos<K> = Option<Key<K>>;

/// A serializable [`PageAt`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Key<K> {
    After(K),
    Offset(i64),
}

impl<K: Clone> Key<K> {
    pub fn at(&self) -> PageAt<K> {
        match self {
            Key::After(k) => PageAt::After(k.clone()),
            Key::Offset(o) => PageAt::Offset(*o),
        }
    }
}

/// `task.report`'s cursor: where each of its three lists goes on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportCursor {
    pub failures: Pos<String>,
    pub changes: Pos<(String, String)>,
    pub not_kept: Pos<(String, i64)>,
}

impl ReportCursor {
    /// Every list from row `offset` (0 for the first page).
    pub fn start(offset: i64) -> Self {
        ReportCursor {
            failures: Some(Key::Offset(offset)),
            changes: Some(Key::Offset(offset)),
            not_kept: Some(Key::Offset(offset)),
        }
    }

    pub fn is_end(&self) -> bool {
        self.failures.is_none() && self.changes.is_none() && self.not_kept.is_none()
    }
}

/// `task.files`' cursor: the per-file report is the done jobs' files, then the entries the
/// listing settled, then the failed ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum FilesAt {
    /// From job `seq` on, less the first `skip` files of that job.
    Jobs {
        seq: i64,
        skip: usize,
    },
    Entries(Key<String>),
    Failures(Key<String>),
}

/// A cursor as the API carries it.
pub fn encode<T: Serialize>(c: &T) -> String {
    let json = serde_json::to_vec(c).expect("a cursor serializes");
    json.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cursor from the API; one that this server did not make is refused.
pub fn decode<T: DeserializeOwned>(s: &str) -> Result<T, ApiError> {
    let bad = || ApiError::invalid("invalid cursor: pass the `next` of the previous page");
    if s.len() % 2 == 1 || !s.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let c = ReportCursor {
            failures: Some(Key::After("a/\"b\"\u{e9}".into())),
            changes: None,
            not_kept: Some(Key::After(("x".into(), 7))),
        };
        assert_eq!(decode::<ReportCursor>(&encode(&c)).unwrap(), c);
        let f = FilesAt::Jobs { seq: 12, skip: 3 };
        assert_eq!(decode::<FilesAt>(&encode(&f)).unwrap(), f);
        for bad in ["", "zz", "abc", "7b7d", "é1"] {
            assert!(decode::<FilesAt>(bad).is_err(), "{bad}");
        }
    }
}
