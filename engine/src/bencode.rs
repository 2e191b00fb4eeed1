//! Bencode (BEP 3): a decoder that borrows from its input and a canonical encoder.
//!
//! Torrent files, tracker responses and the BEP 10 extension handshake all arrive from
//! strangers, so decoding is strict and bounded: integers must be canonical (no leading
//! zeros, no `-0`), dictionary keys unique, nesting at most [`MAX_DEPTH`] deep, and every
//! length is checked against the bytes actually present before anything is sliced. Nothing
//! here panics or allocates in proportion to a length field; every failure is an [`Error`]
//! that says where in the input it happened.
//!
//! Decoding accepts dictionaries whose keys are out of order (some real clients write
//! them), because the info-hash is taken over the raw bytes anyway ([`Dict::raw`]); the
//! encoder always writes sorted keys, since [`OwnedValue`] keeps them in a `BTreeMap`.

use std::collections::{BTreeMap, HashSet};

/// Deepest nesting of lists and dictionaries accepted. Real torrents nest 4 deep; the bound
/// keeps a hostile `llllll...` from exhausting the stack.
pub const MAX_DEPTH: usize = 64;

/// Why a byte string is not valid bencode, with the offset where decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("bencode: input ends early at byte {0}")]
    Eof(usize),
    #[error("bencode: unexpected byte {byte:#04x} at byte {at}")]
    Unexpected { byte: u8, at: usize },
    #[error("bencode: integer at byte {0} is not canonical or overflows 64 bits")]
    BadInteger(usize),
    #[error("bencode: string length at byte {0} is malformed or longer than the input")]
    BadLength(usize),
    #[error("bencode: nesting deeper than {MAX_DEPTH} at byte {0}")]
    TooDeep(usize),
    #[error("bencode: dictionary key at byte {0} is not a byte string")]
    KeyNotString(usize),
    #[error("bencode: duplicate dictionary key at byte {0}")]
    DuplicateKey(usize),
    #[error("bencode: {0} trailing bytes after the value")]
    Trailing(usize),
}

/// A decoded value whose byte strings borrow from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    Dict(Dict<'a>),
}

/// A decoded dictionary, in input order, with the raw bytes it was decoded from (the
/// info-hash is SHA-1 over exactly those bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dict<'a> {
    entries: Vec<(&'a [u8], Value<'a>)>,
    raw: &'a [u8],
}

impl<'a> Dict<'a> {
    /// The value stored under `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The exact input bytes of this dictionary, `d` to `e` inclusive.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &Value<'a>)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<'a> Value<'a> {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The byte string as UTF-8, if it is both.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&Dict<'a>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Copies the value out of its input, e.g. to re-encode it canonically.
    pub fn to_owned_value(&self) -> OwnedValue {
        match self {
            Value::Int(i) => OwnedValue::Int(*i),
            Value::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
            Value::List(l) => OwnedValue::List(l.iter().map(Value::to_owned_value).collect()),
            Value::Dict(d) => OwnedValue::Dict(
                d.iter()
                    .map(|(k, v)| (k.to_vec(), v.to_owned_value()))
                    .collect(),
            ),
        }
    }
}

/// Decodes exactly one value that spans the whole input.
pub fn decode(input: &[u8]) -> Result<Value<'_>, Error> {
    let (value, used) = decode_prefix(input)?;
    if used != input.len() {
        return Err(Error::Trailing(input.len() - used));
    }
    Ok(value)
}

/// Decodes one value from the start of `input` and says how many bytes it used; the BEP 9
/// metadata messages put raw payload right after a bencoded header, so trailing bytes are
/// the caller's business here.
pub fn decode_prefix(input: &[u8]) -> Result<(Value<'_>, usize), Error> {
    let mut d = Decoder { input, pos: 0 };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn peek(&self) -> Result<u8, Error> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(Error::Eof(self.pos))
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, Error> {
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let v = self.integer(b'e')?;
                Ok(Value::Int(v))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            b'l' => {
                if depth >= MAX_DEPTH {
                    return Err(Error::TooDeep(self.pos));
                }
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                if depth >= MAX_DEPTH {
                    return Err(Error::TooDeep(self.pos));
                }
                let start = self.pos;
                self.pos += 1;
                let mut entries: Vec<(&'a [u8], Value<'a>)> = Vec::new();
                // Keys seen, built only once a key arrives out of order. While keys ascend
                // (every canonical dictionary) a new key differs from all before it if it
                // is greater than the last. A linear scan per key instead made a hostile
                // dictionary quadratic: a 650 KB extension handshake of 50,000 descending
                // keys took seconds of CPU (found while fuzzing; see the regression test).
                let mut seen: Option<HashSet<&'a [u8]>> = None;
                while self.peek()? != b'e' {
                    let key_at = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return Err(Error::KeyNotString(key_at));
                    }
                    let key = self.bytes()?;
                    let duplicate = match (&mut seen, entries.last()) {
                        (None, None) => false,
                        (None, Some((last, _))) if key > *last => false,
                        (set, _) => !set
                            .get_or_insert_with(|| entries.iter().map(|(k, _)| *k).collect())
                            .insert(key),
                    };
                    if duplicate {
                        return Err(Error::DuplicateKey(key_at));
                    }
                    let v = self.value(depth + 1)?;
                    entries.push((key, v));
                }
                self.pos += 1;
                Ok(Value::Dict(Dict {
                    entries,
                    raw: &self.input[start..self.pos],
                }))
            }
            byte => Err(Error::Unexpected { byte, at: self.pos }),
        }
    }

    /// Parses a canonical decimal integer terminated by `end`, consuming the terminator.
    fn integer(&mut self, end: u8) -> Result<i64, Error> {
        let start = self.pos;
        let rest = &self.input[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == end)
            .ok_or(Error::Eof(self.input.len()))?;
        let digits = &rest[..len];
        let (neg, body) = match digits.split_first() {
            Some((b'-', body)) => (true, body),
            _ => (false, digits),
        };
        let canonical = !body.is_empty()
            && body.iter().all(u8::is_ascii_digit)
            && (body == b"0" && !neg || body[0] != b'0');
        if !canonical {
            return Err(Error::BadInteger(start));
        }
        let mut v: i64 = 0;
        for &d in body {
            let digit = i64::from(d - b'0');
            v = v
                .checked_mul(10)
                .and_then(|v| {
                    if neg {
                        v.checked_sub(digit)
                    } else {
                        v.checked_add(digit)
                    }
                })
                .ok_or(Error::BadInteger(start))?;
        }
        self.pos += len + 1;
        Ok(v)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let start = self.pos;
        let len = self.integer(b':').map_err(|_| Error::BadLength(start))?;
        let len = usize::try_from(len).map_err(|_| Error::BadLength(start))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.input.len())
            .ok_or(Error::BadLength(start))?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

/// An owned value for building bencode; dictionaries are `BTreeMap`s so keys are always
/// written sorted and unique, as BEP 3 requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedValue {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<OwnedValue>),
    Dict(BTreeMap<Vec<u8>, OwnedValue>),
}

impl OwnedValue {
    /// A byte string from anything byte-like (`&str`, `&[u8]`, `Vec<u8>`).
    pub fn bytes(b: impl AsRef<[u8]>) -> Self {
        OwnedValue::Bytes(b.as_ref().to_vec())
    }

    /// An empty dictionary, to fill with [`OwnedValue::insert`].
    pub fn dict() -> Self {
        OwnedValue::Dict(BTreeMap::new())
    }

    /// Inserts into a dictionary; a no-op on other kinds, which builders never call it on.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: OwnedValue) -> &mut Self {
        if let OwnedValue::Dict(d) = self {
            d.insert(key.as_ref().to_vec(), value);
        }
        self
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            OwnedValue::Int(i) => encode_int(out, *i),
            OwnedValue::Bytes(b) => encode_bytes(out, b),
            OwnedValue::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            OwnedValue::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(out, k);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Appends `i<v>e`.
pub fn encode_int(out: &mut Vec<u8>, v: i64) {
    out.push(b'i');
    out.extend_from_slice(v.to_string().as_bytes());
    out.push(b'e');
}

/// Appends `<len>:<bytes>`.
pub fn encode_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_kind() {
        let v = decode(b"d3:bari-42e3:fool4:spami0eee").unwrap();
        let d = v.as_dict().unwrap();
        assert_eq!(d.get(b"bar").unwrap().as_int(), Some(-42));
        let l = d.get(b"foo").unwrap().as_list().unwrap();
        assert_eq!(l[0].as_str(), Some("spam"));
        assert_eq!(l[1].as_int(), Some(0));
        assert_eq!(d.raw(), b"d3:bari-42e3:fool4:spami0eee");
    }

    #[test]
    fn round_trips_canonically() {
        let input = b"d1:ai1e1:bl0:i9223372036854775807ei-9223372036854775808ee1:cdee";
        let v = decode(input).unwrap();
        assert_eq!(v.to_owned_value().encode(), input.to_vec());
    }

    #[test]
    fn encoder_sorts_keys() {
        let mut d = OwnedValue::dict();
        d.insert("zz", OwnedValue::Int(1))
            .insert("a", OwnedValue::bytes("x"));
        assert_eq!(d.encode(), b"d1:a1:x2:zzi1ee".to_vec());
    }

    #[test]
    fn nested_dict_raw_is_exact() {
        let input = b"d4:infod4:name1:xe5:otheri1ee";
        let v = decode(input).unwrap();
        let info = v
            .as_dict()
            .unwrap()
            .get(b"info")
            .unwrap()
            .as_dict()
            .unwrap();
        assert_eq!(info.raw(), b"d4:name1:xe");
    }

    #[test]
    fn rejects_hostile_inputs() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"i12", "unterminated int"),
            (b"i-0e", "negative zero"),
            (b"i03e", "leading zero"),
            (b"ie", "empty int"),
            (b"i-e", "bare minus"),
            (b"i1x2e", "junk in int"),
            (b"i9223372036854775808e", "overflow"),
            (b"i-9223372036854775809e", "underflow"),
            (b"5:abc", "string longer than input"),
            (b"99999999999999999999999:a", "huge length"),
            (b"-1:a", "negative length"),
            (b"01:a", "non-canonical length"),
            (b"l", "unterminated list"),
            (b"d3:foo", "dict missing value"),
            (b"di1ei2ee", "int key"),
            (b"d1:ai1e1:ai2ee", "duplicate key"),
            (b"x", "unknown type"),
            (b"i1ei2e", "trailing data"),
        ];
        for (input, why) in cases {
            assert!(decode(input).is_err(), "accepted {why}: {input:?}");
        }
    }

    #[test]
    fn bounds_nesting() {
        let deep = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        assert!(matches!(decode(&deep), Err(Error::TooDeep(_))));
        let ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(decode(&ok).is_ok());
        // A million-deep input must fail fast, not overflow the stack.
        let huge = vec![b'd'; 1_000_000];
        assert!(decode(&huge).is_err());
    }

    #[test]
    fn every_truncation_of_a_valid_value_is_an_error() {
        let input =
            b"d8:announce3:url4:infod6:lengthi5e4:name1:x12:piece lengthi16384e6:pieces0:ee";
        assert!(decode(input).is_ok());
        for cut in 0..input.len() {
            assert!(decode(&input[..cut]).is_err(), "prefix {cut} decoded");
        }
    }

    #[test]
    fn prefix_reports_length() {
        let (v, used) = decode_prefix(b"d1:ai1eeTRAILER").unwrap();
        assert_eq!(used, 8);
        assert!(v.as_dict().is_some());
    }

    /// Regression: duplicate detection was a linear scan per key, so a dictionary of n
    /// keys out of order cost n^2 / 2 comparisons (200,000 keys: minutes). Keys in
    /// descending order defeat the sorted fast path; duplicates must still be caught
    /// whether they arrive in order or not.
    #[test]
    fn large_unsorted_dictionary_is_linear_and_still_rejects_duplicates() {
        let n = 200_000u32;
        let mut b = b"d".to_vec();
        for i in (0..n).rev() {
            b.extend_from_slice(format!("8:{i:08x}i0e").as_bytes());
        }
        b.push(b'e');
        let t = std::time::Instant::now();
        let v = decode(&b).expect("distinct keys decode");
        assert_eq!(v.as_dict().map(Dict::len), Some(n as usize));
        // Quadratic took minutes; linear takes well under a second even unoptimised.
        assert!(t.elapsed().as_secs() < 10, "took {:?}", t.elapsed());

        assert_eq!(decode(b"d1:ai0e1:ai0ee"), Err(Error::DuplicateKey(7)));
        assert_eq!(
            decode(b"d1:bi0e1:ai0e1:bi0ee"),
            Err(Error::DuplicateKey(13))
        );
        assert_eq!(
            decode(b"d1:ci0e1:ai0e1:bi0e1:ai0ee"),
            Err(Error::DuplicateKey(19))
        );
        assert!(decode(b"d1:ci0e1:ai0e1:bi0e1:di0ee").is_ok());
    }
}
