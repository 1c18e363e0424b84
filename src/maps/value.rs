//! A map's keys and values, each checked where it is decoded (from a client, a peer or the
//! disk): a key is 1 to [`MAP_KEY_BYTES_MAX`] bytes of UTF-8 text; a value is one JSON
//! document of at most [`MAP_VALUE_BYTES_MAX`] bytes, nested at most [`MAP_VALUE_DEPTH_MAX`]
//! deep, kept as the text the client sent (so every reader sees the same bytes). A value of
//! these types is always valid: the only ways in are the checked constructors and
//! `Deserialize`, which runs the same checks.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest key.
pub const MAP_KEY_BYTES_MAX: usize = 1024;
/// The largest value's JSON text.
pub const MAP_VALUE_BYTES_MAX: usize = 256 * 1024;
/// How deep a value's arrays and objects may nest.
pub const MAP_VALUE_DEPTH_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMapData {
    #[error("a map key must not be empty")]
    EmptyKey,
    #[error("map key of {0} bytes is over the limit of {MAP_KEY_BYTES_MAX}")]
    KeyTooLong(usize),
    #[error("a map key must be UTF-8 text")]
    KeyNotText,
    #[error("map value of {0} bytes is over the limit of {MAP_VALUE_BYTES_MAX}")]
    ValueTooLarge(usize),
    #[error("a map value must be one JSON document: {0}")]
    ValueNotJson(String),
    #[error("a map value may nest at most {MAP_VALUE_DEPTH_MAX} arrays and objects deep")]
    ValueTooDeep,
}

/// A map's key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MapKey(String);

impl MapKey {
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidMapData> {
        let key = key.into();
        if key.is_empty() {
            return Err(InvalidMapData::EmptyKey);
        }
        if key.len() > MAP_KEY_BYTES_MAX {
            return Err(InvalidMapData::KeyTooLong(key.len()));
        }
        Ok(Self(key))
    }

    /// A key from bytes (a path segment, the disk).
    pub fn from_bytes(key: Vec<u8>) -> Result<Self, InvalidMapData> {
        if key.len() > MAP_KEY_BYTES_MAX {
            return Err(InvalidMapData::KeyTooLong(key.len()));
        }
        let key = String::from_utf8(key).map_err(|_| InvalidMapData::KeyNotText)?;
        Self::new(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for MapKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        MapKey::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for MapKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A map's value: the JSON text of one document, without surrounding whitespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MapValue(String);

impl MapValue {
    /// Checks `text` is one JSON document within the limits.
    pub fn from_json(text: &[u8]) -> Result<Self, InvalidMapData> {
        if text.len() > MAP_VALUE_BYTES_MAX {
            return Err(InvalidMapData::ValueTooLarge(text.len()));
        }
        let text = std::str::from_utf8(text)
            .map_err(|_| InvalidMapData::ValueNotJson("not UTF-8 text".into()))?
            .trim_matches(|character: char| character.is_ascii_whitespace());
        // Depth first: a bracket count never recurses, so a hostile nesting costs one pass.
        if crate::events::json::nesting_depth(text.as_bytes()) > MAP_VALUE_DEPTH_MAX {
            return Err(InvalidMapData::ValueTooDeep);
        }
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|error| InvalidMapData::ValueNotJson(error.to_string()))?;
        Ok(Self(text.to_string()))
    }

    /// The value of a JSON document this process made (always valid).
    pub fn from_value(value: &serde_json::Value) -> Result<Self, InvalidMapData> {
        Self::from_json(value.to_string().as_bytes())
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The bytes it counts for in a map's size.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for MapValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        MapValue::from_json(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_one_json_document_within_limits() {
        assert_eq!(
            MapValue::from_json(b" {\"a\": [1, 2]}\n")
                .unwrap()
                .as_json(),
            "{\"a\": [1, 2]}"
        );
        assert_eq!(
            MapValue::from_json(b"\"text\"").unwrap().as_json(),
            "\"text\""
        );
        for bad in [&b""[..], b"{", b"1 2", b"nul", b"\xff", b"{\"a\":}"] {
            assert!(
                matches!(
                    MapValue::from_json(bad),
                    Err(InvalidMapData::ValueNotJson(_))
                ),
                "{bad:?}"
            );
        }
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            MapValue::from_json(deep.as_bytes()),
            Err(InvalidMapData::ValueTooDeep)
        );
        let fine = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(MapValue::from_json(fine.as_bytes()).is_ok());
        // Brackets inside strings are text.
        let quoted = format!("\"{}\"", "[".repeat(100));
        assert!(MapValue::from_json(quoted.as_bytes()).is_ok());
        let big = format!("\"{}\"", "x".repeat(MAP_VALUE_BYTES_MAX));
        assert!(matches!(
            MapValue::from_json(big.as_bytes()),
            Err(InvalidMapData::ValueTooLarge(_))
        ));
    }

    #[test]
    fn keys_are_short_text() {
        assert_eq!(MapKey::new(""), Err(InvalidMapData::EmptyKey));
        assert!(MapKey::new("x".repeat(MAP_KEY_BYTES_MAX)).is_ok());
        assert!(MapKey::new("x".repeat(MAP_KEY_BYTES_MAX + 1)).is_err());
        assert_eq!(
            MapKey::from_bytes(vec![0xff]),
            Err(InvalidMapData::KeyNotText)
        );
        // Decoding runs the same checks.
        assert!(postcard::from_bytes::<MapKey>(&postcard::to_stdvec("").unwrap()).is_err());
        assert!(postcard::from_bytes::<MapValue>(&postcard::to_stdvec("{").unwrap()).is_err());
    }
}
