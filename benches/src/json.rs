//! The harness's JSON value: what it reads (iperf3 `-J`, corvid's `--json` event lines, a
//! simulator config) and the results.json it writes.
//!
//! serde_json does the reading and the writing (syntax, escaping, numbers); this type keeps
//! object keys in insertion order, so results.json reads in the order it was built,
//! without turning on serde_json's `preserve_order` for the whole workspace. Parsing is
//! bounded in depth ([`MAX_DEPTH`]); printing keeps arrays of plain numbers (per-host
//! times, CDFs) on one line.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    /// Keys keep their insertion order, so results.json reads in the order it was built.
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn obj() -> Json {
        Json::Obj(Vec::new())
    }

    /// Adds a key to an object (builder style); a no-op on any other variant.
    pub fn with(mut self, key: &str, v: impl Into<Json>) -> Json {
        if let Json::Obj(ref mut kv) = self {
            kv.push((key.to_string(), v.into()));
        }
        self
    }

    pub fn push(&mut self, key: &str, v: impl Into<Json>) {
        if let Json::Obj(ref mut kv) = self {
            kv.push((key.to_string(), v.into()));
        }
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a path of object keys.
    pub fn at(&self, path: &[&str]) -> Option<&Json> {
        path.iter().try_fold(self, |v, k| v.get(k))
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 1.9e19 => Some(*n as u64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Pretty-prints with two-space indentation, ending in a newline.
    pub fn pretty(&self) -> String {
        // A Json holds only strings, finite numbers (others print as null) and
        // containers of them: serialising it cannot fail.
        let mut out = serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{e}"));
        out.push('\n');
        out
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            // JSON has no NaN or infinity: a missing figure is null. Whole numbers print
            // without a fraction.
            Json::Num(n) if !n.is_finite() => s.serialize_unit(),
            Json::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => s.serialize_i64(*n as i64),
            Json::Num(n) => s.serialize_f64(*n),
            Json::Str(v) => s.serialize_str(v),
            Json::Arr(items)
                if !items.is_empty()
                    && items.iter().all(|v| matches!(v, Json::Num(_) | Json::Null)) =>
            {
                // Arrays of plain numbers stay on one line, also in pretty output.
                let parts: Result<Vec<String>, _> =
                    items.iter().map(serde_json::to_string).collect();
                let line = format!("[{}]", parts.map_err(serde::ser::Error::custom)?.join(", "));
                serde_json::value::RawValue::from_string(line)
                    .map_err(serde::ser::Error::custom)?
                    .serialize(s)
            }
            Json::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Json::Obj(kv) => {
                let mut map = s.serialize_map(Some(kv.len()))?;
                for (k, v) in kv {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl From<f64> for Json {
    fn from(v: f64) -> Json {
        Json::Num(v)
    }
}
impl From<u64> for Json {
    fn from(v: u64) -> Json {
        Json::Num(v as f64)
    }
}
impl From<usize> for Json {
    fn from(v: usize) -> Json {
        Json::Num(v as f64)
    }
}
impl From<i64> for Json {
    fn from(v: i64) -> Json {
        Json::Num(v as f64)
    }
}
impl From<bool> for Json {
    fn from(v: bool) -> Json {
        Json::Bool(v)
    }
}
impl From<&str> for Json {
    fn from(v: &str) -> Json {
        Json::Str(v.to_string())
    }
}
impl From<String> for Json {
    fn from(v: String) -> Json {
        Json::Str(v)
    }
}
impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(v: Option<T>) -> Json {
        v.map_or(Json::Null, Into::into)
    }
}
impl<T: Into<Json>> From<Vec<T>> for Json {
    fn from(v: Vec<T>) -> Json {
        Json::Arr(v.into_iter().map(Into::into).collect())
    }
}

/// Deepest nesting [`parse`] accepts (what the harness reads is a few levels deep).
pub const MAX_DEPTH: usize = 64;

/// Parses one JSON document; trailing non-whitespace is an error.
pub fn parse(text: &str) -> Result<Json, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Depth(0).deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

/// Reads a value `0` levels deep, refusing to go past [`MAX_DEPTH`].
struct Depth(usize);

impl<'de> DeserializeSeed<'de> for Depth {
    type Value = Json;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Depth {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Num(v as f64))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Num(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Num(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let inner = self.deeper()?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Depth(inner))? {
            items.push(v);
        }
        Ok(Json::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let inner = self.deeper()?;
        let mut kv = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            kv.push((k, map.next_value_seed(Depth(inner))?));
        }
        Ok(Json::Obj(kv))
    }
}

impl Depth {
    fn deeper<E: de::Error>(&self) -> Result<usize, E> {
        if self.0 >= MAX_DEPTH {
            return Err(E::custom(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(self.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_corvid_done_line() {
        let line = r#"{"event":"done","report":{"bytes_down":4194304,"from_seeder":1048576,"piece_latency_us":{"p50":812,"p99":4021.5}}}"#;
        let v = parse(line).unwrap();
        assert_eq!(v.get("event").and_then(Json::as_str), Some("done"));
        assert_eq!(
            v.at(&["report", "bytes_down"]).and_then(Json::as_u64),
            Some(4194304)
        );
        assert_eq!(
            v.at(&["report", "piece_latency_us", "p99"])
                .and_then(Json::as_f64),
            Some(4021.5)
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "{",
            "{\"a\":}",
            "[1,]",
            "{\"a\":1,}",
            "nul",
            "\"abc",
            "1 2",
            "{a:1}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&deep).is_err());
    }

    /// results.json's layout, byte for byte: insertion order, two-space indent, whole
    /// numbers without a fraction, arrays of numbers on one line, NaN as null.
    #[test]
    fn pretty_layout_is_pinned() {
        let v = Json::obj()
            .with("n", 3u64)
            .with("x", 0.25)
            .with("hosts", vec![1.0, 2.5, f64::NAN])
            .with("empty", Json::Arr(Vec::new()))
            .with("rows", vec![Json::obj().with("a", "b")])
            .with("none", Json::obj());
        assert_eq!(
            v.pretty(),
            "{\n  \"n\": 3,\n  \"x\": 0.25,\n  \"hosts\": [1, 2.5, null],\n  \"empty\": [],\n  \"rows\": [\n    {\n      \"a\": \"b\"\n    }\n  ],\n  \"none\": {}\n}\n"
        );
    }

    #[test]
    fn round_trips_with_escapes() {
        let v = Json::obj()
            .with("name", "h1 \"quoted\"\n\\ \u{1}")
            .with("n", 3u64)
            .with("x", 0.25)
            .with("nan", f64::NAN)
            .with("list", vec![1.0, 2.5])
            .with("none", Option::<u64>::None);
        let text = v.pretty();
        let back = parse(&text).unwrap();
        assert_eq!(back.get("name"), v.get("name"));
        assert_eq!(back.get("x"), Some(&Json::Num(0.25)));
        assert_eq!(back.get("nan"), Some(&Json::Null));
        assert_eq!(back.get("list"), v.get("list"));
    }
}
