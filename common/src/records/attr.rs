//! One attribute of a record, in the DynamoDB types the records use, and the plain map
//! of them that an item is. Readers are lenient by design: a record may come from an
//! older or newer agent, so a missing attribute, one of another type or a time that
//! does not parse reads as absent instead of failing the whole record.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// One attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    S(String),
    /// Numbers stay in DynamoDB's decimal text, so nothing is lost on the way through.
    N(String),
    Bool(bool),
    /// Any other type (lists, maps, sets), kept as DynamoDB's debug text: no record
    /// attribute has one, but `lease tasks show` must not hide one it finds.
    Other(String),
}

impl Attr {
    pub fn s(v: impl Into<String>) -> Self {
        Attr::S(v.into())
    }

    pub fn n(v: impl ToString) -> Self {
        Attr::N(v.to_string())
    }

    /// An RFC 3339 time in whole seconds, the form every record time is written in.
    pub fn time(t: DateTime<Utc>) -> Self {
        Attr::S(crate::tags::render_time(t))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Attr::S(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        self.as_number()
    }

    /// A number attribute parsed as `T`; text that does not fit `T` reads as absent.
    pub fn as_number<T: FromStr>(&self) -> Option<T> {
        match self {
            Attr::N(n) => n.parse().ok(),
            _ => None,
        }
    }

    /// The value as a person reads it in a table.
    pub fn text(&self) -> String {
        match self {
            Attr::S(s) | Attr::N(s) | Attr::Other(s) => s.clone(),
            Attr::Bool(b) => b.to_string(),
        }
    }

    pub fn from_sdk(v: &AttributeValue) -> Self {
        match v {
            AttributeValue::S(s) => Attr::S(s.clone()),
            AttributeValue::N(n) => Attr::N(n.clone()),
            AttributeValue::Bool(b) => Attr::Bool(*b),
            other => Attr::Other(format!("{other:?}")),
        }
    }

    /// `Other` goes back as its text: nothing writes one, and a string is the one type
    /// that keeps what was read.
    pub fn to_sdk(&self) -> AttributeValue {
        match self {
            Attr::S(s) | Attr::Other(s) => AttributeValue::S(s.clone()),
            Attr::N(n) => AttributeValue::N(n.clone()),
            Attr::Bool(b) => AttributeValue::Bool(*b),
        }
    }
}

/// JSON output shows numbers as numbers and everything else as it is.
impl Serialize for Attr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Attr::N(n) => match (n.parse::<i64>(), n.parse::<f64>()) {
                (Ok(i), _) => s.serialize_i64(i),
                (_, Ok(f)) => s.serialize_f64(f),
                _ => s.serialize_str(n),
            },
            Attr::S(v) | Attr::Other(v) => s.serialize_str(v),
            Attr::Bool(b) => s.serialize_bool(*b),
        }
    }
}

/// A record: attribute name to value, sorted by name so output is stable.
pub type Item = BTreeMap<String, Attr>;

/// The SDK's form of an item, as `GetItem`, `Scan` and `ReturnValues` hand it over.
pub type SdkItem = HashMap<String, AttributeValue>;

pub fn from_sdk_item(m: &SdkItem) -> Item {
    m.iter()
        .map(|(k, v)| (k.clone(), Attr::from_sdk(v)))
        .collect()
}

pub fn to_sdk_item(item: &Item) -> SdkItem {
    item.iter().map(|(k, v)| (k.clone(), v.to_sdk())).collect()
}

/// Reads a string attribute.
pub fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(Attr::as_str)
}

/// Reads a number attribute as `T`.
pub fn get_n<T: FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name).and_then(Attr::as_number)
}

/// Reads an RFC 3339 time attribute; a value that does not parse counts as absent.
pub fn get_time(item: &Item, name: &str) -> Option<DateTime<Utc>> {
    get_s(item, name)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Adds `name` to `item` when the value is there.
pub(super) fn put<T>(item: &mut Item, name: &str, value: Option<T>, attr: impl Fn(T) -> Attr) {
    if let Some(v) = value {
        item.insert(name.to_string(), attr(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn readers_treat_other_types_and_bad_text_as_absent() {
        let item = Item::from([
            ("s".to_string(), Attr::s("x")),
            ("n".to_string(), Attr::n(42)),
            ("big".to_string(), Attr::n(5_000_000_000_i64)),
            ("t".to_string(), Attr::s("2026-11-23T12:00:00+01:00")),
            ("bad_t".to_string(), Attr::s("yesterday")),
        ]);
        assert_eq!(get_s(&item, "s"), Some("x"));
        assert_eq!(get_s(&item, "n"), None);
        assert_eq!(get_n::<u32>(&item, "n"), Some(42));
        assert_eq!(get_n::<u32>(&item, "big"), None);
        assert_eq!(get_n::<i64>(&item, "s"), None);
        assert_eq!(
            get_time(&item, "t"),
            Some(Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap())
        );
        assert_eq!(get_time(&item, "bad_t"), None);
        assert_eq!(get_time(&item, "missing"), None);
    }

    #[test]
    fn sdk_values_round_trip() {
        let sdk = SdkItem::from([
            ("s".to_string(), AttributeValue::S("x".into())),
            ("n".to_string(), AttributeValue::N("1.5".into())),
            ("b".to_string(), AttributeValue::Bool(true)),
        ]);
        assert_eq!(to_sdk_item(&from_sdk_item(&sdk)), sdk);
        let list = Attr::from_sdk(&AttributeValue::L(vec![]));
        assert!(
            matches!(list, Attr::Other(ref t) if t.contains('L')),
            "{list:?}"
        );
    }

    #[test]
    fn json_shows_numbers_as_numbers() {
        let item = Item::from([
            ("a".to_string(), Attr::n(3)),
            ("b".to_string(), Attr::n("1.5")),
            ("c".to_string(), Attr::s("3")),
            ("d".to_string(), Attr::Bool(false)),
        ]);
        assert_eq!(
            serde_json::to_string(&item).unwrap(),
            r#"{"a":3,"b":1.5,"c":"3","d":false}"#
        );
    }
}
