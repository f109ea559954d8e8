//! The JSON walker: objects are read member by member on the raw text, so member order is
//! known and a request's `id` is echoed in its exact textual form (`1.0` stays `1.0`); and ids.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::*;

pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

pub(super) fn skip_ws(text: &[u8], mut pos: usize) -> usize {
    while text.get(pos).copied().is_some_and(is_ws) {
        pos += 1;
    }
    pos
}

/// Whether arrays and objects nest at most `max_depth` deep. Runs before the parser, so deep
/// input never reaches recursive code.
pub(super) fn depth_within(text: &[u8], max_depth: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// The payload as one valid JSON document (UTF-8, nesting within `max_depth`), trimmed of
/// surrounding white space; `None` when it is not.
pub(super) fn document(payload: &[u8], max_depth: usize) -> Option<&[u8]> {
    let doc = document_to_parse(payload, max_depth)?;
    serde_json::from_slice::<IgnoredAny>(doc).ok()?;
    Some(doc)
}

/// [`document`] without its syntax check, for a caller whose next step parses the whole
/// document anyway ([`members`] or [`elements`] reject what the check would) and treats invalid
/// syntax like any other malformed document: one pass over the text less.
pub(super) fn document_to_parse(payload: &[u8], max_depth: usize) -> Option<&[u8]> {
    std::str::from_utf8(payload).ok()?;
    if !depth_within(payload, max_depth) {
        return None;
    }
    Some(trim_ws(payload))
}

/// `text` without the white space around it.
pub(super) fn trim_ws(text: &[u8]) -> &[u8] {
    let start = skip_ws(text, 0);
    let mut end = text.len();
    while end > start && text.get(end - 1).copied().is_some_and(is_ws) {
        end -= 1;
    }
    &text[start..end]
}

/// An object's members in order: (decoded name, raw value text). A name without escapes borrows
/// the text.
pub(super) type Members<'a> = Vec<(Cow<'a, str>, &'a [u8])>;

/// A member name: borrowed from the text unless it had escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(name)))
            }
            fn visit_str<E>(self, name: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }
            fn visit_string<E>(self, name: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(name)))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// The members of the JSON object `text` (exactly one value), in order; `None` when `text` is
/// not an object or not valid JSON. The raw text is serde_json's `RawValue`, so a value (an
/// `id`, say) keeps its exact text.
pub(super) fn members(text: &[u8]) -> Option<Members<'_>> {
    struct Members<'a>(Vec<(Name<'a>, &'a RawValue)>);

    impl<'de> Deserialize<'de> for Members<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Members<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Members<'de>, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                        out.push(entry);
                    }
                    Ok(Members(out))
                }
            }
            deserializer.deserialize_map(Visit)
        }
    }

    let Members(members) = serde_json::from_slice(text).ok()?;
    Some(
        members
            .into_iter()
            .map(|(name, raw)| (name.0, raw.get().as_bytes()))
            .collect(),
    )
}

/// [`members`] of a plain object, read without the JSON parser: every name and string value
/// without escapes or control characters, every other value an integer, `true`, `false`,
/// `null`, or (`nested`) a plain object itself. `None` for anything else, valid or not: the
/// caller then takes [`members`], which decides. So this accepts only valid JSON and returns
/// exactly what [`members`] would; a fuzz target checks both. Text that is not UTF-8 is refused.
pub(super) fn plain_members(text: &[u8], nested: bool) -> Option<Members<'_>> {
    let mut out = Vec::with_capacity(6);
    plain_object(text, nested, |name, value| {
        // The text is UTF-8 and the name has no escapes: its inside is the name.
        out.push((Cow::Borrowed(std::str::from_utf8(name).ok()?), value));
        Some(())
    })?;
    Some(out)
}

/// Walks the plain object `text` (see [`plain_members`]), handing each member's name (the text
/// between its quotes) and raw value to `member` in order, without collecting them; `None` when
/// `text` is not a plain object or `member` gives up.
pub(super) fn plain_object<'a>(
    text: &'a [u8],
    nested: bool,
    member: impl FnMut(&'a [u8], &'a [u8]) -> Option<()>,
) -> Option<()> {
    let mut scan = Plain { text, at: 0 };
    scan.object(nested, member)?;
    (scan.at == text.len()).then_some(())
}

/// The members of a jsonkv request object that validation reads (the last of each name wins,
/// as with [`member`]), as raw value text.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RequestFields<'a> {
    pub jsonkv: Option<&'a [u8]>,
    pub operate: Option<&'a [u8]>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub id: Option<&'a [u8]>,
    /// Read by the plain reader: every string is valid UTF-8 without escapes.
    pub plain: bool,
}

impl<'a> RequestFields<'a> {
    /// Notes one member (decoded name, raw value); other names are ignored.
    fn set(&mut self, name: &[u8], raw: &'a [u8]) {
        let slot = match name {
            b"jsonkv" => &mut self.jsonkv,
            b"operate" => &mut self.operate,
            b"key" => &mut self.key,
            b"value" => &mut self.value,
            b"id" => &mut self.id,
            _ => return,
        };
        *slot = Some(raw);
    }

    /// A member's raw value as a string ([`raw_str`]); a plain reader's string is taken as
    /// it is, without looking for escapes again.
    pub fn text(&self, raw: &'a [u8]) -> Option<Cow<'a, str>> {
        if !self.plain {
            return raw_str(raw);
        }
        match raw {
            [b'"', inner @ .., b'"'] => std::str::from_utf8(inner).ok().map(Cow::Borrowed),
            _ => None,
        }
    }

    pub fn from_members(members: &Members<'a>) -> Self {
        let mut fields = RequestFields::default();
        for (name, raw) in members {
            fields.set(name.as_bytes(), raw);
        }
        fields
    }

    /// A plain object's fields ([`plain_members`]), read without collecting its members.
    pub fn plain(text: &'a [u8]) -> Option<Self> {
        let mut fields = RequestFields {
            plain: true,
            ..RequestFields::default()
        };
        plain_object(text, false, |name, raw| {
            fields.set(name, raw);
            Some(())
        })?;
        Some(fields)
    }
}

/// The cursor of [`plain_members`].
struct Plain<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Plain<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        self.at = skip_ws(self.text, self.at);
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// An object starting at the cursor, up to its closing brace; each member goes to `member`.
    fn object(
        &mut self,
        nested: bool,
        mut member: impl FnMut(&'a [u8], &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        self.skip_ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.skip_ws();
            let name = self.string()?;
            let name = name.get(1..name.len() - 1)?;
            self.skip_ws();
            self.eat(b':')?;
            self.skip_ws();
            let value = self.value(nested)?;
            member(name, value)?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A member value's raw text.
    fn value(&mut self, nested: bool) -> Option<&'a [u8]> {
        let start = self.at;
        match self.peek()? {
            b'"' => return self.string(),
            b'{' if nested => self.object(false, |_, _| Some(()))?,
            b'-' | b'0'..=b'9' => self.integer()?,
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => return None,
        }
        self.text.get(start..self.at)
    }

    /// A string without escapes or control characters, quotes included.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        self.eat(b'"')?;
        let (end, ascii) = plain_string_end(self.text, self.at)?;
        // Outside strings a plain object is ASCII, so checking each string's inside is
        // checking the whole text: the scan above saw whether it is ASCII (the common case);
        // anything else is checked in full.
        if !ascii {
            std::str::from_utf8(self.text.get(self.at..end)?).ok()?;
        }
        self.at = end + 1;
        self.text.get(start..self.at)
    }

    /// `-?(0|[1-9][0-9]*)`; a fraction or exponent is left to the parser.
    fn integer(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.at += 1;
                }
            }
            _ => return None,
        }
        // `1.5`, `1e3`: valid, but not plain.
        match self.peek() {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(()),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.text.get(self.at..end)? == word).then(|| self.at = end)
    }
}

// Eight bytes at a time (SWAR). Each mask below has the high bit set in the first byte of
// `word` (little-endian: the lowest) that matches, and maybe in later ones, never in an earlier
// one: a borrow only runs up from a byte that matched. So "any byte" and "the first byte" are
// both exact.
const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGH: u64 = ONES * 0x80;

/// The bytes of `word` that are zero.
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGH
}

/// The bytes of `word` that a JSON string must escape: quote, backslash, control character.
fn escape_bytes(word: u64) -> u64 {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    zero_bytes(word ^ (ONES * u64::from(b'"')))
        | zero_bytes(word ^ (ONES * u64::from(b'\\')))
        | below_space
}

fn word_at(text: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = text.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// The first byte of `text` from `at` that stops a plain string's scan: a byte to escape
/// (the closing quote among them) or a non-ASCII one.
fn string_stop(text: &[u8], mut at: usize) -> Option<usize> {
    // Reading past the string's end is fine: it stops at the closing quote first.
    while let Some(word) = word_at(text, at) {
        let found = escape_bytes(word) | (word & HIGH);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = text.get(at..)?;
    let stop = tail
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))?;
    Some(at + stop)
}

/// The closing quote of the plain string whose inside starts at `at` (no escapes, no control
/// characters), and whether its inside is ASCII; `None` when the string is not plain or not
/// closed. Non-ASCII bytes are not checked here.
pub(super) fn plain_string_end(text: &[u8], mut at: usize) -> Option<(usize, bool)> {
    let mut ascii = true;
    loop {
        let stop = string_stop(text, at)?;
        match text[stop] {
            b'"' => return Some((stop, ascii)),
            0x80..=0xff => {
                ascii = false;
                at = stop + 1;
            }
            _ => return None,
        }
    }
}

/// Whether `s` has a byte a JSON string must escape (a quote, a backslash, a control
/// character): one pass, eight bytes at a time, without counting them ([`escapes`]).
pub fn needs_escape(s: &[u8]) -> bool {
    any_byte(s, escape_bytes, |b| b < 0x20 || b == b'"' || b == b'\\')
}

/// [`needs_escape`], or a byte of 0x80 or more: false for the usual value, which is then
/// known to be plain UTF-8 text without a second pass.
pub(super) fn needs_escape_or_non_ascii(s: &[u8]) -> bool {
    any_byte(
        s,
        |word| escape_bytes(word) | (word & HIGH),
        |b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x80,
    )
}

/// Whether some byte of `s` is one that `in_word` marks in a word (or `is_one` tells of a
/// byte, for an input shorter than a word).
#[inline(always)]
fn any_byte(s: &[u8], in_word: impl Fn(u64) -> u64, is_one: impl Fn(u8) -> bool) -> bool {
    let mut words = s.chunks_exact(8);
    let mut found = 0;
    for word in &mut words {
        found |= word
            .try_into()
            .map_or(0, |w| in_word(u64::from_le_bytes(w)));
    }
    let rest = words.remainder();
    if rest.is_empty() {
        return found != 0;
    }
    // The last eight bytes, some seen already: harmless for "any".
    match s.len().checked_sub(8).and_then(|from| word_at(s, from)) {
        Some(last) => found | in_word(last) != 0,
        None => found != 0 || rest.iter().any(|&b| is_one(b)),
    }
}

/// The elements of the JSON array `text` (exactly one value), as raw text; `None` when `text` is
/// not an array or not valid JSON.
pub(super) fn elements(text: &[u8]) -> Option<Vec<&[u8]>> {
    let elements: Vec<&RawValue> = serde_json::from_slice(text).ok()?;
    Some(
        elements
            .into_iter()
            .map(|raw| raw.get().as_bytes())
            .collect(),
    )
}

/// The raw value of member `name`; the last one wins, as in most JSON parsers.
pub(super) fn member<'a>(members: &[(Cow<'_, str>, &'a [u8])], name: &str) -> Option<&'a [u8]> {
    members
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
}

/// The member `name` parsed as a `Value`: `None` when absent, `Some(None)` when unparsable
/// (for example a lone surrogate escape).
pub(super) fn member_value(members: &[(Cow<'_, str>, &[u8])], name: &str) -> Option<Option<Value>> {
    member(members, name).map(|raw| serde_json::from_slice(raw).ok())
}

pub(super) fn member_string(members: &[(Cow<'_, str>, &[u8])], name: &str) -> Option<String> {
    member_str(members, name)?.map(Cow::into_owned)
}

/// The member `name` as a string: `None` when absent, `Some(None)` when not a string. A string
/// without escapes is borrowed from the text without parsing it again.
pub(super) fn member_str<'a>(
    members: &[(Cow<'_, str>, &'a [u8])],
    name: &str,
) -> Option<Option<Cow<'a, str>>> {
    member(members, name).map(raw_str)
}

/// A member's raw value as a string; `None` when not a string. A string without escapes is
/// borrowed from the text without parsing it again.
pub(super) fn raw_str(raw: &[u8]) -> Option<Cow<'_, str>> {
    if let [b'"', inner @ .., b'"'] = raw {
        // Validated JSON: a string's raw text has no control characters, and without a
        // backslash it has no escapes either, so it is the string itself.
        if !inner.contains(&b'\\') {
            return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
        }
    }
    match serde_json::from_slice(raw).ok() {
        Some(Value::String(s)) => Some(Cow::Owned(s)),
        _ => None,
    }
}

/// `text` without insignificant white space.
pub(super) fn minify(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    // Work on chars so multi-byte UTF-8 sequences are copied whole.
    for c in String::from_utf8_lossy(text).chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
    out
}

/// How many more bytes `s` takes as a JSON string than as text, beyond its quotes: 5 for each
/// control character (`\u001f`, an upper bound: `\n` takes 1), 1 for each quote and backslash.
/// Every byte is looked at, with no early exit, 16 at a time into 16 byte-wide counters, so the
/// loop runs on whole vectors. Summed straight into a `usize` it took 4 bytes per step, and was
/// a tenth of the server's time per jsonkv GET.
pub fn escapes(s: &str) -> usize {
    fn cost(b: u8) -> u8 {
        (u8::from(b < 0x20) * 5) | u8::from(b == b'"') | u8::from(b == b'\\')
    }
    fn add(counters: &mut [u8; 16], chunk: &[u8]) {
        for (n, &b) in counters.iter_mut().zip(chunk) {
            *n = n.wrapping_add(cost(b));
        }
    }
    fn sum(counters: &[u8; 16]) -> usize {
        counters.iter().map(|&n| usize::from(n)).sum()
    }
    let mut chunks = s.as_bytes().chunks_exact(16);
    let (mut total, mut counters, mut added) = (0, [0u8; 16], 0);
    for chunk in &mut chunks {
        add(&mut counters, chunk);
        added += 1;
        // A counter holds at most 51 × 5 = 255.
        if added == 50 {
            total += sum(&counters);
            counters = [0; 16];
            added = 0;
        }
    }
    let tail = chunks.remainder();
    match s.len().checked_sub(16) {
        // The last 16 bytes, counting only the lanes not counted yet. (Copying the tail into
        // a padded chunk instead stalled the load that followed the copy.)
        Some(from) if !tail.is_empty() => {
            let skip = 16 - tail.len();
            for (lane, (n, &b)) in counters.iter_mut().zip(&s.as_bytes()[from..]).enumerate() {
                *n = n.wrapping_add(cost(b) * u8::from(lane >= skip));
            }
        }
        _ => total += tail.iter().map(|&b| usize::from(cost(b))).sum::<usize>(),
    }
    total + sum(&counters)
}

/// Appends `s` as a JSON string (serde_json escaping: quotes, backslashes and control
/// characters; non-ASCII stays UTF-8).
pub(super) fn put_str(out: &mut BytesMut, s: &str) {
    if !needs_escape(s.as_bytes()) {
        // Nothing to escape: the common case, written without the formatter.
        out.reserve(s.len() + 2);
        out.put_u8(b'"');
        out.put_slice(s.as_bytes());
        out.put_u8(b'"');
        return;
    }
    // Writing to a BytesMut cannot fail.
    let _ = serde_json::to_writer(out.writer(), s);
}

// ---------------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------------

/// A request id, kept as its compact JSON text so that it is echoed verbatim (§3.2). A short
/// id (a number, a short string: the common case) is held inline, so reading one allocates
/// nothing.
#[derive(Clone)]
pub struct Id(IdText);

/// The longest id held inline (the enum then takes 24 bytes, a `String`'s size).
const INLINE_ID: usize = 22;

#[derive(Clone)]
enum IdText {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Heap(Box<str>),
}

impl Id {
    pub fn null() -> Id {
        Id::from_text("null")
    }

    pub fn number(n: u64) -> Id {
        Id::from_text(&n.to_string())
    }

    pub fn string(s: &str) -> Id {
        let mut out = BytesMut::new();
        put_str(&mut out, s);
        Id::from_text(&String::from_utf8_lossy(&out))
    }

    /// An id from JSON text (one valid value); white space outside strings is removed.
    pub fn from_json(text: &str) -> Option<Id> {
        serde_json::from_str::<IgnoredAny>(text).ok()?;
        Some(Id::from_text(&minify(text.as_bytes())))
    }

    /// From the raw text of a member of a validated document.
    pub(super) fn from_raw(raw: &[u8]) -> Id {
        match std::str::from_utf8(raw) {
            // Already compact (a number, say): no white space to take out.
            Ok(text) if !raw.iter().copied().any(is_ws) => Id::from_text(text),
            _ => Id::from_text(&minify(raw)),
        }
    }

    /// An integer's text (`-?[0-9]+`, checked by the caller): ASCII, so it needs no UTF-8
    /// check or white-space pass.
    #[inline(always)]
    pub(super) fn from_integer(digits: &[u8]) -> Id {
        match u8::try_from(digits.len()) {
            Ok(len) if digits.len() <= 16 => {
                // Gathered in a register and stored as one word: a `memcpy` of the digits
                // wrote bytes that the id's next move read back as a word, and stalled.
                let word = digits
                    .iter()
                    .rev()
                    .fold(0u128, |word, &digit| (word << 8) | u128::from(digit));
                let mut bytes = [0; INLINE_ID];
                bytes[..16].copy_from_slice(&word.to_le_bytes());
                Id(IdText::Inline { len, bytes })
            }
            Ok(len) if digits.len() <= INLINE_ID => {
                let mut bytes = [0; INLINE_ID];
                bytes[..digits.len()].copy_from_slice(digits);
                Id(IdText::Inline { len, bytes })
            }
            _ => Id::from_raw(digits),
        }
    }

    /// `text` is compact JSON.
    fn from_text(text: &str) -> Id {
        Id(match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE_ID => {
                let mut bytes = [0; INLINE_ID];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                IdText::Inline { len, bytes }
            }
            _ => IdText::Heap(text.into()),
        })
    }

    pub fn is_null(&self) -> bool {
        self.json_bytes() == b"null"
    }

    /// The compact JSON text's bytes, as they are written (no UTF-8 check: they came from a
    /// `&str`).
    #[inline]
    pub fn json_bytes(&self) -> &[u8] {
        match &self.0 {
            IdText::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdText::Heap(text) => text.as_bytes(),
        }
    }

    /// The compact JSON text.
    pub fn as_json(&self) -> &str {
        match &self.0 {
            // Built from a `&str` cut at its end: always valid UTF-8.
            IdText::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or("null")
            }
            IdText::Heap(text) => text,
        }
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        self.json_bytes() == other.json_bytes()
    }
}

impl Eq for Id {}

impl std::hash::Hash for Id {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_json().hash(state);
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Id").field(&self.as_json()).finish()
    }
}

/// The `id` member of an object (`null` when absent).
pub(super) fn read_id(members: &[(Cow<'_, str>, &[u8])]) -> Id {
    member(members, "id").map_or_else(Id::null, Id::from_raw)
}
