//! The `baggage` header of W3C Baggage: `key=value` list members with optional `;` properties.
//!
//! Limits: the grammar allows at most 180 list members (`list-member 0*179(...)`), and the
//! spec's Limits section asks a platform to propagate at least 64 members and at least 8192
//! bytes. This parser accepts up to [`MAX_BAGGAGE_MEMBERS`] (180) members in up to
//! [`MAX_BAGGAGE_BYTES`] (8192) bytes of header value, and rejects anything larger whole
//! rather than guessing which members to drop.
//!
//! Keys are RFC 9110 tokens; values are baggage-octets (printable ASCII without space, `"`,
//! `,`, `;` and `\`), percent-encoded UTF-8. Surrounding spaces and tabs of keys, values,
//! properties and members are trimmed as the spec requires. Empty list members (as when the
//! caller joins several `baggage` fields with `,` and one is empty) are skipped.

use super::{trim_ows, TraceError};

/// The longest `baggage` value accepted, in bytes (the spec's 8192-byte minimum).
pub const MAX_BAGGAGE_BYTES: usize = 8192;

/// The most list members accepted (the grammar's 180; the spec's minimum is 64).
pub const MAX_BAGGAGE_MEMBERS: usize = 180;

/// One `baggage` list member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaggageMember {
    key: String,
    value: String,
    raw_value: String,
    properties: Vec<String>,
}

impl BaggageMember {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value, percent-decoded (invalid UTF-8 after decoding becomes U+FFFD, as the spec
    /// requires; a `%` not followed by two hex digits stays as it is).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The value as it appears in the header (percent-encoded).
    pub fn raw_value(&self) -> &str {
        &self.raw_value
    }

    /// The properties as they appear in the header, trimmed: `name` or `name=value`.
    pub fn properties(&self) -> &[String] {
        &self.properties
    }

    /// The length of this member in [`Baggage::to_header`].
    fn header_len(&self) -> usize {
        self.key.len()
            + 1
            + self.raw_value.len()
            + self.properties.iter().map(|p| p.len() + 1).sum::<usize>()
    }
}

/// A parsed `baggage` header: its list members in order. Keys may repeat (the spec does not
/// forbid it); [`Baggage::get`] returns the first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    members: Vec<BaggageMember>,
}

impl Baggage {
    /// Parses a (combined) `baggage` value. An empty value is an empty baggage.
    pub fn parse(value: &str) -> Result<Baggage, TraceError> {
        if value.len() > MAX_BAGGAGE_BYTES {
            return Err(TraceError::BaggageTooLong);
        }
        let mut members = Vec::new();
        for raw in value.split(',') {
            let member = trim_ows(raw);
            if member.is_empty() {
                continue;
            }
            if members.len() >= MAX_BAGGAGE_MEMBERS {
                return Err(TraceError::BaggageTooManyMembers);
            }
            members.push(parse_member(member)?);
        }
        Ok(Baggage { members })
    }

    /// The number of list members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no list members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The decoded value of the first member with `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.value.as_str())
    }

    /// The list members, in order.
    pub fn members(&self) -> &[BaggageMember] {
        &self.members
    }

    /// `(key, decoded value)` of each member, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().map(|m| (m.key(), m.value()))
    }

    /// Sets `key` to `value` (percent-encoded as needed), replacing every member with that key,
    /// as the last member. Fails, changing nothing, when `key` is not a token or the result
    /// would break [`MAX_BAGGAGE_MEMBERS`] or [`MAX_BAGGAGE_BYTES`].
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), TraceError> {
        if !is_token(key) {
            return Err(TraceError::BaggageKey);
        }
        let member = BaggageMember {
            key: key.to_string(),
            value: value.to_string(),
            raw_value: percent_encode(value),
            properties: Vec::new(),
        };
        let kept = self.members.iter().filter(|m| m.key != key);
        let count = kept.clone().count() + 1;
        let len: usize = kept.map(|m| m.header_len() + 1).sum::<usize>() + member.header_len();
        if count > MAX_BAGGAGE_MEMBERS {
            return Err(TraceError::BaggageTooManyMembers);
        }
        if len > MAX_BAGGAGE_BYTES {
            return Err(TraceError::BaggageTooLong);
        }
        self.members.retain(|m| m.key != key);
        self.members.push(member);
        Ok(())
    }

    /// Removes every member with `key`; returns whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.members.len();
        self.members.retain(|m| m.key != key);
        self.members.len() != before
    }

    /// The header value: `key=value;property` members joined by `,`, values and properties as
    /// received (or as encoded by [`Baggage::insert`]), no optional whitespace.
    pub fn to_header(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&m.key);
            out.push('=');
            out.push_str(&m.raw_value);
            for p in &m.properties {
                out.push(';');
                out.push_str(p);
            }
        }
        out
    }
}

/// One trimmed, non-empty list member: `key OWS "=" OWS value *( OWS ";" OWS property )`.
fn parse_member(member: &str) -> Result<BaggageMember, TraceError> {
    let mut parts = member.split(';');
    let pair = parts.next().unwrap_or_default();
    let (key, raw_value) = pair.split_once('=').ok_or(TraceError::BaggageFormat)?;
    let key = trim_ows(key);
    let raw_value = trim_ows(raw_value);
    if !is_token(key) {
        return Err(TraceError::BaggageKey);
    }
    if !raw_value.bytes().all(is_baggage_octet) {
        return Err(TraceError::BaggageValue);
    }
    let mut properties = Vec::new();
    for property in parts {
        properties.push(parse_property(trim_ows(property)).ok_or(TraceError::BaggageProperty)?);
    }
    Ok(BaggageMember {
        key: key.to_string(),
        value: percent_decode(raw_value),
        raw_value: raw_value.to_string(),
        properties,
    })
}

/// `key OWS "=" OWS value` or `key`, normalized without the inner whitespace.
fn parse_property(property: &str) -> Option<String> {
    match property.split_once('=') {
        Some((k, v)) => {
            let (k, v) = (trim_ows(k), trim_ows(v));
            (is_token(k) && v.bytes().all(is_baggage_octet)).then(|| format!("{k}={v}"))
        }
        None => is_token(property).then(|| property.to_string()),
    }
}

/// An RFC 9110 token: one or more tchar.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// baggage-octet: `%x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` sequences; other bytes, and a `%` without two hex digits after it, are kept.
/// Invalid UTF-8 in the result is replaced by U+FFFD.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes every byte that is not a baggage-octet, and `%` itself.
fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if is_baggage_octet(b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            for nibble in [b >> 4, b & 0x0f] {
                if let Some(h) = HEX.get(usize::from(nibble)) {
                    out.push(char::from(*h));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_members_and_properties() {
        let b = Baggage::parse(
            "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue",
        )
        .unwrap();
        assert_eq!(b.len(), 3);
        assert!(!b.is_empty());
        assert_eq!(b.get("key1"), Some("value1"));
        assert_eq!(b.get("key2"), Some("value2"));
        assert_eq!(b.get("key3"), Some("value3"));
        assert_eq!(b.get("nope"), None);
        assert_eq!(b.members()[0].properties(), ["property1", "property2"]);
        assert_eq!(b.members()[2].properties(), ["propertyKey=propertyValue"]);
        assert_eq!(
            b.to_header(),
            "key1=value1;property1;property2,key2=value2,key3=value3;propertyKey=propertyValue"
        );
        let pairs: Vec<(&str, &str)> = b.iter().collect();
        assert_eq!(pairs[1], ("key2", "value2"));
    }

    #[test]
    fn ows_everywhere_is_trimmed() {
        let b = Baggage::parse(
            "SomeKey \t = \t SomeValue \t ; \t SomeProp \t , \t SomeKey2 \t = \t SomeValue2 \t ; \t ValueProp \t = \t PropVal",
        )
        .unwrap();
        assert_eq!(b.get("SomeKey"), Some("SomeValue"));
        assert_eq!(b.get("SomeKey2"), Some("SomeValue2"));
        assert_eq!(b.members()[0].properties(), ["SomeProp"]);
        assert_eq!(b.members()[1].properties(), ["ValueProp=PropVal"]);
        assert_eq!(
            b.to_header(),
            "SomeKey=SomeValue;SomeProp,SomeKey2=SomeValue2;ValueProp=PropVal"
        );
    }

    #[test]
    fn values_may_hold_equals_and_be_empty() {
        let b = Baggage::parse("SomeKey=SomeValue=equals,empty=").unwrap();
        assert_eq!(b.get("SomeKey"), Some("SomeValue=equals"));
        assert_eq!(b.get("empty"), Some(""));
        assert_eq!(b.to_header(), "SomeKey=SomeValue=equals,empty=");
    }

    #[test]
    fn percent_decoding() {
        let b = Baggage::parse("userId=alice,serverNode=DF%2028,isProduction=false").unwrap();
        assert_eq!(b.get("serverNode"), Some("DF 28"));
        assert_eq!(b.members()[1].raw_value(), "DF%2028");
        // Passed through as received.
        assert_eq!(
            b.to_header(),
            "userId=alice,serverNode=DF%2028,isProduction=false"
        );
        let b = Baggage::parse("k=%09%20%22%27%3B%3Dasdf%21%40%23%24%25%5E%26%2A%28%29").unwrap();
        assert_eq!(b.get("k"), Some("\t \"';=asdf!@#$%^&*()"));
        let b = Baggage::parse("k=%E2%82%AC,bad=%FF,lone=%,short=%4,nothex=%zz").unwrap();
        assert_eq!(b.get("k"), Some("€"));
        assert_eq!(b.get("bad"), Some("\u{fffd}"));
        assert_eq!(b.get("lone"), Some("%"));
        assert_eq!(b.get("short"), Some("%4"));
        assert_eq!(b.get("nothex"), Some("%zz"));
    }

    #[test]
    fn duplicates_are_kept_and_get_returns_the_first() {
        let b = Baggage::parse("k=1,k=2").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.get("k"), Some("1"));
        assert_eq!(b.to_header(), "k=1,k=2");
    }

    #[test]
    fn empty_members_are_skipped() {
        for v in ["", " ", ",", " , ,\t"] {
            let b = Baggage::parse(v).unwrap();
            assert!(b.is_empty(), "{v:?}");
            assert_eq!(b.to_header(), "");
        }
        let b = Baggage::parse("userId=alice,,serverNode=DF%2028").unwrap();
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn invalid_members() {
        let cases = [
            ("novalue", TraceError::BaggageFormat),
            ("a=1,novalue", TraceError::BaggageFormat),
            (";p=1", TraceError::BaggageFormat),
            ("=value", TraceError::BaggageKey),
            (" = value", TraceError::BaggageKey),
            ("ke y=value", TraceError::BaggageKey),
            ("k\"=value", TraceError::BaggageKey),
            ("k(=value", TraceError::BaggageKey),
            ("ké=value", TraceError::BaggageKey),
            ("k=va lue", TraceError::BaggageValue),
            ("k=\"quoted\"", TraceError::BaggageValue),
            ("k=back\\slash", TraceError::BaggageValue),
            ("k=tab\there", TraceError::BaggageValue),
            ("k=é", TraceError::BaggageValue),
            ("k=\u{7f}", TraceError::BaggageValue),
            ("k=v;", TraceError::BaggageProperty),
            ("k=v;;p", TraceError::BaggageProperty),
            ("k=v;=x", TraceError::BaggageProperty),
            ("k=v;p q", TraceError::BaggageProperty),
            ("k=v;p=a b", TraceError::BaggageProperty),
            ("k=v;p=\"x\"", TraceError::BaggageProperty),
        ];
        for (v, want) in cases {
            assert_eq!(Baggage::parse(v), Err(want), "{v:?}");
        }
    }

    #[test]
    fn member_limit() {
        let members: Vec<String> = (0..MAX_BAGGAGE_MEMBERS)
            .map(|i| format!("k{i}=v"))
            .collect();
        let b = Baggage::parse(&members.join(",")).unwrap();
        assert_eq!(b.len(), MAX_BAGGAGE_MEMBERS);
        let over = format!("{},extra=1", members.join(","));
        assert_eq!(
            Baggage::parse(&over),
            Err(TraceError::BaggageTooManyMembers)
        );
    }

    #[test]
    fn byte_limit() {
        // One member of exactly 8192 bytes: "a=" and 8190 value bytes.
        let at_limit = format!("a={}", "0123456789".repeat(819));
        assert_eq!(at_limit.len(), MAX_BAGGAGE_BYTES);
        assert_eq!(Baggage::parse(&at_limit).unwrap().to_header(), at_limit);
        let over = format!("{at_limit}1");
        assert_eq!(Baggage::parse(&over), Err(TraceError::BaggageTooLong));
        // Whitespace counts too.
        let padded = format!("{}a=1", " ".repeat(MAX_BAGGAGE_BYTES));
        assert_eq!(Baggage::parse(&padded), Err(TraceError::BaggageTooLong));
    }

    #[test]
    fn insert_and_remove() {
        let mut b = Baggage::parse("a=1,k=old,b=2,k=older").unwrap();
        b.insert("k", "new value;é").unwrap();
        assert_eq!(b.get("k"), Some("new value;é"));
        assert_eq!(b.to_header(), "a=1,b=2,k=new%20value%3B%C3%A9");
        // What insert writes parses back to the same value.
        let again = Baggage::parse(&b.to_header()).unwrap();
        assert_eq!(again.get("k"), Some("new value;é"));
        b.insert("pct", "100%").unwrap();
        assert_eq!(
            Baggage::parse(&b.to_header()).unwrap().get("pct"),
            Some("100%")
        );
        assert_eq!(b.insert("bad key", "1"), Err(TraceError::BaggageKey));
        assert_eq!(b.insert("", "1"), Err(TraceError::BaggageKey));
        assert!(b.remove("a"));
        assert!(!b.remove("a"));
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn insert_respects_limits() {
        let members: Vec<String> = (0..MAX_BAGGAGE_MEMBERS)
            .map(|i| format!("k{i}=v"))
            .collect();
        let mut full = Baggage::parse(&members.join(",")).unwrap();
        assert_eq!(
            full.insert("new", "1"),
            Err(TraceError::BaggageTooManyMembers)
        );
        // Replacing an existing key is fine.
        full.insert("k0", "2").unwrap();
        assert_eq!(full.len(), MAX_BAGGAGE_MEMBERS);

        let mut big = Baggage::parse(&format!("a={}", "x".repeat(8000))).unwrap();
        assert_eq!(
            big.insert("b", &"y".repeat(200)),
            Err(TraceError::BaggageTooLong)
        );
        assert_eq!(big.len(), 1);
        big.insert("b", "y").unwrap();
        assert!(big.to_header().len() <= MAX_BAGGAGE_BYTES);
    }
}
