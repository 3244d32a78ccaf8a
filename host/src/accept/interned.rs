//! Destinations as producers send them, parsed once per process.
//!
//! A producer sends the same destination text with every report (one scanner, one index). The
//! first time a (consumer key, text) arrives it is parsed into a [`Destination`]; later requests
//! carrying the same text get that same `Destination` for a hash and a compare, so its canonical
//! form, plugin view and sealed bytes (each worked out once inside it) are shared across requests,
//! not only within one.
//!
//! Bounded, in two generations: new texts go into the current one; a text found in the previous
//! one moves to the current one. When the current one holds [`MAX_ENTRIES`] texts or
//! [`MAX_BYTES`] (the texts and what their destinations keep of them), or is [`MAX_AGE`] old,
//! it becomes the previous one and the old previous one is dropped. So a destination in use stays,
//! one unused for two generations is forgotten (its plaintext config with it), and a producer
//! cycling through endless distinct texts costs the others at most a parse each. Texts longer
//! than [`MAX_TEXT`] are parsed per request and not kept.

use crate::destination::Destination;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most destination texts in one generation.
pub const MAX_ENTRIES: usize = 4096;
/// Most bytes one generation accounts for: each text counted four times (as sent, canonical, as
/// the plugin sees it, sealed).
pub const MAX_BYTES: usize = 16 << 20;
/// Longest destination text kept.
pub const MAX_TEXT: usize = 64 << 10;
/// Age at which the current generation is retired even when not full.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// The process's parsed destinations, by (consumer key, text as sent).
pub struct Interned {
    map: Mutex<Generations>,
    hasher: foldhash::fast::RandomState,
}

impl Default for Interned {
    fn default() -> Interned {
        Interned { map: Mutex::new(Generations::new(Instant::now())), hasher: Default::default() }
    }
}

struct Generations {
    current: Generation,
    previous: Generation,
    /// When `current` began.
    since: Instant,
}

#[derive(Default)]
struct Generation {
    /// By the hash of (key, text); a colliding text replaces the entry (lookups compare both).
    entries: HashMap<u64, Entry, foldhash::fast::RandomState>,
    bytes: usize,
}

struct Entry {
    text: Box<str>,
    destination: Destination,
}

impl Entry {
    fn is(&self, key: &str, text: &str) -> bool {
        *self.destination.key == *key && *self.text == *text
    }
}

/// What an entry accounts for in [`MAX_BYTES`].
fn cost(key: &str, text: &str) -> usize {
    key.len() + 4 * text.len() + 256
}

impl Generations {
    fn new(now: Instant) -> Generations {
        Generations { current: Generation::default(), previous: Generation::default(), since: now }
    }

    /// Make room for `cost` more bytes: retire the current generation when it is full or old.
    /// Returns the generation dropped, to be freed outside the lock.
    fn make_room(&mut self, cost: usize, now: Instant) -> Option<Generation> {
        let full = self.current.entries.len() >= MAX_ENTRIES || self.current.bytes + cost > MAX_BYTES;
        if !full && now.duration_since(self.since) < MAX_AGE {
            return None;
        }
        self.since = now;
        Some(std::mem::replace(&mut self.previous, std::mem::take(&mut self.current)))
    }

    fn insert(&mut self, hash: u64, entry: Entry, cost: usize) {
        if let Some(old) = self.current.entries.insert(hash, entry) {
            self.current.bytes -= self::cost(&old.destination.key, &old.text);
        }
        self.current.bytes += cost;
    }
}

impl Interned {
    /// The destination of `key` sent as `text` (a JSON object, checked by the envelope parser):
    /// the one parsed earlier, or parsed now by `parse` and kept.
    pub fn get_or_parse(&self, key: &str, text: &str, parse: impl FnOnce() -> Destination) -> Destination {
        if text.len() > MAX_TEXT {
            return parse();
        }
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        text.hash(&mut h);
        let hash = h.finish();
        let cost = cost(key, text);
        let now = Instant::now();
        {
            let mut g = self.map.lock().unwrap();
            if let Some(e) = g.current.entries.get(&hash)
                && e.is(key, text)
            {
                return e.destination.clone();
            }
            if g.previous.entries.get(&hash).is_some_and(|e| e.is(key, text)) {
                // In use: moves to the current generation.
                let e = g.previous.entries.remove(&hash).expect("just found");
                g.previous.bytes -= cost;
                let destination = e.destination.clone();
                let dropped = g.make_room(cost, now);
                g.insert(hash, e, cost);
                drop(g);
                drop(dropped);
                return destination;
            }
        }
        // Parsed outside the lock: two requests racing on a new text may both parse it; the
        // second's replaces the first's (equal destinations).
        let destination = parse();
        let mut g = self.map.lock().unwrap();
        let dropped = g.make_room(cost, now);
        g.insert(hash, Entry { text: text.into(), destination: destination.clone() }, cost);
        drop(g);
        drop(dropped);
        destination
    }

    /// Texts kept now, in both generations.
    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.map.lock().unwrap();
        g.current.entries.len() + g.previous.entries.len()
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
    fn bounded_by_count_and_a_destination_in_use_stays() {
        let i = Interned::default();
        let hot = r#"{"index":"hot"}"#;
        let first = i.get_or_parse("openSearch", hot, || parse("openSearch", hot));
        let mut parsed_hot = 0;
        for n in 0..3 * MAX_ENTRIES {
            let text = format!(r#"{{"index":"i{n}"}}"#);
            let d = i.get_or_parse("openSearch", &text, || parse("openSearch", &text));
            assert_eq!(&*d.config, text, "each text gets its own destination");
            if n % 1000 == 0 {
                let again = i.get_or_parse("openSearch", hot, || {
                    parsed_hot += 1;
                    parse("openSearch", hot)
                });
                assert!(again.same(&first), "the destination in use is kept through the churn");
            }
        }
        assert_eq!(parsed_hot, 0);
        assert!(i.len() <= 2 * MAX_ENTRIES, "{} kept", i.len());
        // One not asked for over two generations is forgotten.
        let cold = r#"{"index":"i0"}"#;
        let mut parsed = false;
        i.get_or_parse("openSearch", cold, || {
            parsed = true;
            parse("openSearch", cold)
        });
        assert!(parsed);
    }

    #[test]
    fn bounded_by_bytes_and_long_texts_are_not_kept() {
        let i = Interned::default();
        let big = "x".repeat(MAX_TEXT - 100);
        for n in 0..2 * MAX_BYTES / cost("openSearch", &big) + 10 {
            let text = format!(r#"{{"index":"{n}{big}"}}"#);
            i.get_or_parse("openSearch", &text, || parse("openSearch", &text));
            let g = i.map.lock().unwrap();
            assert!(g.current.bytes <= MAX_BYTES && g.previous.bytes <= MAX_BYTES);
        }
        let before = i.len();
        let long = format!(r#"{{"index":"{}"}}"#, "y".repeat(MAX_TEXT));
        let a = i.get_or_parse("openSearch", &long, || parse("openSearch", &long));
        let b = i.get_or_parse("openSearch", &long, || parse("openSearch", &long));
        assert!(!a.same(&b), "parsed each time");
        assert_eq!(i.len(), before);
    }

    #[test]
    fn an_old_generation_is_retired_even_when_not_full() {
        let mut g = Generations::new(Instant::now());
        let t0 = g.since;
        assert!(g.make_room(1, t0 + MAX_AGE / 2).is_none());
        let text = r#"{"index":"a"}"#;
        g.insert(1, Entry { text: text.into(), destination: parse("openSearch", text) }, cost("openSearch", text));
        assert!(g.make_room(1, t0 + MAX_AGE).is_some());
        assert_eq!((g.current.entries.len(), g.previous.entries.len()), (0, 1));
        assert!(g.make_room(1, t0 + 2 * MAX_AGE).is_some());
        assert_eq!((g.current.entries.len(), g.previous.entries.len()), (0, 0), "gone after two generations");
    }
}
