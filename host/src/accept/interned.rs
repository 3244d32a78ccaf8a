//! Destinations as producers send them, parsed once per process.
//!
//! A producer sends the same destination text with every report (one scanner, one index). The
//! first time a (consumer key, text) arrives it is parsed into a [`Destination`]; later requests
//! carrying the same text get that same `Destination` for a hash and a compare, so its canonical
//! form, plugin view and sealed bytes (each worked out once inside it) are shared across requests,
//! not only within one.
//!
//! Bounded: at most [`MAX_ENTRIES`] texts and [`MAX_BYTES`] of them; past either, the cache starts
//! over empty (a producer cycling through endless distinct destinations costs itself the parse it
//! would have paid anyway, and no memory).

use crate::destination::Destination;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;

/// Most destination texts kept.
pub const MAX_ENTRIES: usize = 4096;
/// Most bytes of destination text kept.
pub const MAX_BYTES: usize = 16 << 20;

/// The process's parsed destinations, by (consumer key, text as sent).
#[derive(Default)]
pub struct Interned {
    map: Mutex<Map>,
    hasher: foldhash::fast::RandomState,
}

#[derive(Default)]
struct Map {
    /// By the hash of (key, text); a colliding text replaces the entry (lookups compare both).
    entries: HashMap<u64, Entry, foldhash::fast::RandomState>,
    bytes: usize,
}

struct Entry {
    key: Box<str>,
    text: Box<str>,
    destination: Destination,
}

impl Interned {
    /// The destination of `key` sent as `text` (a JSON object, checked by the envelope parser):
    /// the one parsed earlier, or parsed now by `parse` and kept.
    pub fn get_or_parse(&self, key: &str, text: &str, parse: impl FnOnce() -> Destination) -> Destination {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        text.hash(&mut h);
        let hash = h.finish();
        if let Some(e) = self.map.lock().unwrap().entries.get(&hash)
            && *e.key == *key
            && *e.text == *text
        {
            return e.destination.clone();
        }
        // Parsed outside the lock: two requests racing on a new text may both parse it; the
        // second's replaces the first's (equal destinations).
        let destination = parse();
        let mut map = self.map.lock().unwrap();
        let size = key.len() + text.len();
        if map.entries.len() >= MAX_ENTRIES || map.bytes + size > MAX_BYTES {
            map.entries.clear();
            map.bytes = 0;
        }
        let entry = Entry { key: key.into(), text: text.into(), destination: destination.clone() };
        if let Some(old) = map.entries.insert(hash, entry) {
            map.bytes -= old.key.len() + old.text.len();
        }
        map.bytes += size;
        destination
    }

    /// Texts kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(key: &str, text: &str) -> Destination {
        Destination::from_value(key, &serde_json::from_str(text).unwrap())
    }

    #[test]
    fn the_same_text_is_parsed_once_and_shared() {
        let i = Interned::default();
        let text = r#"{"index":"a","host_port":"http://os:9200"}"#;
        let mut parsed = 0;
        let a = i.get_or_parse("openSearch", text, || {
            parsed += 1;
            parse("openSearch", text)
        });
        let b = i.get_or_parse("openSearch", text, || {
            parsed += 1;
            parse("openSearch", text)
        });
        assert_eq!(parsed, 1);
        assert!(a.same(&b), "one Destination shared");
        // Another key, or other text, is another entry.
        let c = i.get_or_parse("webhook", text, || parse("webhook", text));
        assert!(!c.same(&a));
        assert_eq!(&*c.key, "webhook");
        let other = r#"{"index":"b"}"#;
        let d = i.get_or_parse("openSearch", other, || parse("openSearch", other));
        assert_eq!(&*d.config, r#"{"index":"b"}"#);
        assert_eq!(i.len(), 3);
    }

    #[test]
    fn bounded_by_count() {
        let i = Interned::default();
        for n in 0..MAX_ENTRIES + 10 {
            let text = format!(r#"{{"index":"i{n}"}}"#);
            let d = i.get_or_parse("openSearch", &text, || parse("openSearch", &text));
            assert_eq!(&*d.config, text, "each text gets its own destination");
        }
        assert!(i.len() <= MAX_ENTRIES, "{} kept", i.len());
        assert_eq!(i.len(), 10, "started over once full");
    }

    #[test]
    fn bounded_by_bytes() {
        let i = Interned::default();
        let big = "x".repeat(MAX_BYTES / 3);
        for n in 0..4 {
            let text = format!(r#"{{"index":"{n}{big}"}}"#);
            i.get_or_parse("openSearch", &text, || parse("openSearch", &text));
        }
        let map = i.map.lock().unwrap();
        assert!(map.bytes <= MAX_BYTES, "{} bytes kept", map.bytes);
        assert_eq!(map.entries.len(), 2);
    }
}
