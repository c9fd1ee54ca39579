//! The gRPC length-prefixed message framing, followed across body chunks so each message's
//! declared length is known before any of its bytes are passed on: whole chunks for a response
//! ([`MessageScanner`]), one message at a time for a request ([`MessageCutter`]).

use bytes::{Bytes, BytesMut};

/// A message prefix: a compression flag byte and a big-endian 32-bit length.
const PREFIX_LEN: usize = 5;

/// What one chunk held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// The bytes that may be passed on: whole prefixes and message bytes under the limit.
    pub pass: Bytes,
    /// The declared length of a message over the limit; its prefix and everything after it
    /// were withheld.
    pub oversized: Option<u64>,
}

/// Follows message boundaries through a stream of chunks.
#[derive(Debug, Default)]
pub(crate) struct MessageScanner {
    /// Bytes of the current message not yet seen.
    remaining: u64,
    /// The start of a prefix split across chunks, held back until it is whole.
    partial_prefix: BytesMut,
}

impl MessageScanner {
    /// Scans the next chunk against `limit`.
    pub fn scan(&mut self, chunk: Bytes, limit: usize) -> Scanned {
        let chunk = if self.partial_prefix.is_empty() {
            chunk
        } else {
            // Rare: a prefix split across chunks. Copy once to see it whole.
            self.partial_prefix.extend_from_slice(&chunk);
            self.partial_prefix.split().freeze()
        };
        let mut pos = 0usize;
        let len = chunk.len();
        loop {
            if self.remaining > 0 {
                let take = self.remaining.min((len - pos) as u64);
                pos += take as usize;
                self.remaining -= take;
                if self.remaining > 0 {
                    break;
                }
                continue;
            }
            if pos == len {
                break;
            }
            if len - pos < PREFIX_LEN {
                self.partial_prefix.extend_from_slice(&chunk[pos..]);
                return Scanned {
                    pass: chunk.slice(..pos),
                    oversized: None,
                };
            }
            let declared = u32::from_be_bytes([
                chunk[pos + 1],
                chunk[pos + 2],
                chunk[pos + 3],
                chunk[pos + 4],
            ]);
            if declared as usize > limit {
                return Scanned {
                    pass: chunk.slice(..pos),
                    oversized: Some(u64::from(declared)),
                };
            }
            self.remaining = u64::from(declared);
            pos += PREFIX_LEN;
        }
        Scanned {
            pass: chunk,
            oversized: None,
        }
    }

    /// Bytes held back at the end of the stream: a prefix the peer never finished.
    pub fn take_unfinished(&mut self) -> Option<Bytes> {
        (!self.partial_prefix.is_empty()).then(|| self.partial_prefix.split().freeze())
    }
}

/// What a request stream's next bytes are, as [`MessageCutter::next`] sees them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Bytes of the message in progress to pass on; `ends` when they finish it.
    Pass { bytes: Bytes, ends: bool },
    /// The next message's prefix is whole and declares this many bytes, within the limit:
    /// [`MessageCutter::start`] passes it on.
    Starts(u64),
    /// The next message's prefix declares this many bytes, over the limit.
    Oversized(u64),
    /// Nothing to pass on until more bytes arrive.
    NeedMore,
}

/// Cuts a request stream at its message boundaries, so a message's prefix is seen, and its
/// bytes can be paid for, before any of it is passed on, and bytes of the next message are
/// never passed on with the end of the one before.
#[derive(Debug, Default)]
pub(crate) struct MessageCutter {
    /// Bytes read and not yet passed on: the rest of a chunk, or a prefix split across chunks.
    held: Bytes,
    /// Bytes of the message in progress not yet passed on; 0 between messages.
    remaining: u64,
}

impl MessageCutter {
    /// Adds a chunk read from the stream: only once [`next`](Self::next) asked for more.
    pub fn push(&mut self, chunk: Bytes) {
        if self.held.is_empty() {
            self.held = chunk;
        } else {
            // Rare: a prefix split across chunks. Copy once to see it whole.
            let mut joined = BytesMut::with_capacity(self.held.len() + chunk.len());
            joined.extend_from_slice(&self.held);
            joined.extend_from_slice(&chunk);
            self.held = joined.freeze();
        }
    }

    /// The next thing to do with what is held, against `limit`.
    pub fn next(&mut self, limit: usize) -> Cut {
        if self.remaining > 0 {
            if self.held.is_empty() {
                return Cut::NeedMore;
            }
            return self.pass(0);
        }
        let Some(declared) = self.declared() else {
            return Cut::NeedMore;
        };
        if declared > limit as u64 {
            return Cut::Oversized(declared);
        }
        Cut::Starts(declared)
    }

    /// Passes on the prefix [`next`](Self::next) answered [`Cut::Starts`] for, with what is
    /// held of its message.
    pub fn start(&mut self) -> Cut {
        let Some(declared) = self.declared() else {
            return Cut::NeedMore;
        };
        self.remaining = declared;
        self.pass(PREFIX_LEN)
    }

    /// Bytes held back at the end of the stream: a prefix the peer never finished.
    pub fn take_unfinished(&mut self) -> Option<Bytes> {
        (!self.held.is_empty()).then(|| std::mem::take(&mut self.held))
    }

    fn declared(&self) -> Option<u64> {
        let p = self.held.get(..PREFIX_LEN)?;
        Some(u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]])))
    }

    /// Passes on `head` bytes and as much of the message in progress as is held.
    fn pass(&mut self, head: usize) -> Cut {
        let body = self.remaining.min((self.held.len() - head) as u64);
        self.remaining -= body;
        Cut::Pass {
            bytes: self.held.split_to(head + body as usize),
            ends: self.remaining == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(b'x', len));
        m
    }

    #[test]
    fn messages_under_the_limit_pass_whole() {
        let mut s = MessageScanner::default();
        let mut chunk = message(10);
        chunk.extend(message(0));
        chunk.extend(message(100));
        let out = s.scan(Bytes::from(chunk.clone()), 100);
        assert_eq!(out.pass, Bytes::from(chunk));
        assert_eq!(out.oversized, None);
        assert_eq!(s.take_unfinished(), None);
    }

    #[test]
    fn an_oversized_message_is_cut_at_its_prefix() {
        let mut s = MessageScanner::default();
        let mut chunk = message(3);
        chunk.extend(message(101));
        let out = s.scan(Bytes::from(chunk), 100);
        assert_eq!(out.pass, Bytes::from(message(3)));
        assert_eq!(out.oversized, Some(101));
    }

    #[test]
    fn messages_and_prefixes_split_across_chunks_are_followed() {
        let mut stream = message(40);
        stream.extend(message(200));
        // Every split point, including ones inside a prefix.
        for cut_a in 0..stream.len() {
            for cut_b in [cut_a, (cut_a + 7).min(stream.len())] {
                let mut s = MessageScanner::default();
                let mut passed = Vec::new();
                let mut oversized = None;
                for part in [&stream[..cut_a], &stream[cut_a..cut_b], &stream[cut_b..]] {
                    let out = s.scan(Bytes::copy_from_slice(part), 100);
                    passed.extend_from_slice(&out.pass);
                    if out.oversized.is_some() {
                        oversized = out.oversized;
                        break;
                    }
                }
                assert_eq!(oversized, Some(200), "cuts {cut_a} {cut_b}");
                // The first message passed whole, none of the oversized one's prefix did.
                assert_eq!(&passed[..], &stream[..45], "cuts {cut_a} {cut_b}");
            }
        }
    }

    #[test]
    fn a_prefix_left_unfinished_is_returned_at_the_end() {
        let mut s = MessageScanner::default();
        let out = s.scan(Bytes::from_static(&[0, 0, 0]), 100);
        assert!(out.pass.is_empty());
        assert_eq!(s.take_unfinished(), Some(Bytes::from_static(&[0, 0, 0])));
        assert_eq!(s.take_unfinished(), None);
    }

    /// Feeds `stream` to a cutter in the given parts, starting every message it may, and
    /// returns what it passed on, frame by frame.
    fn cut(parts: &[&[u8]], limit: usize) -> (Vec<(Vec<u8>, bool)>, Option<u64>) {
        let mut c = MessageCutter::default();
        let mut out = Vec::new();
        for part in parts {
            c.push(Bytes::copy_from_slice(part));
            loop {
                match c.next(limit) {
                    Cut::Pass { bytes, ends } => out.push((bytes.to_vec(), ends)),
                    Cut::Starts(_) => match c.start() {
                        Cut::Pass { bytes, ends } => out.push((bytes.to_vec(), ends)),
                        other => panic!("start gave {other:?}"),
                    },
                    Cut::Oversized(d) => return (out, Some(d)),
                    Cut::NeedMore => break,
                }
            }
        }
        (out, None)
    }

    #[test]
    fn requests_are_cut_at_every_message_end() {
        let mut stream = message(3);
        stream.extend(message(0));
        stream.extend(message(4));
        let (out, oversized) = cut(&[&stream], 100);
        assert_eq!(oversized, None);
        assert_eq!(
            out,
            vec![(message(3), true), (message(0), true), (message(4), true)]
        );
    }

    #[test]
    fn a_request_message_split_anywhere_passes_whole_and_ends_once() {
        let mut stream = message(40);
        stream.extend(message(7));
        for a in 0..stream.len() {
            for b in [a, (a + 3).min(stream.len())] {
                let (out, oversized) = cut(&[&stream[..a], &stream[a..b], &stream[b..]], 100);
                assert_eq!(oversized, None, "cuts {a} {b}");
                let passed: Vec<u8> = out.iter().flat_map(|(p, _)| p.clone()).collect();
                assert_eq!(passed, stream, "cuts {a} {b}");
                // Exactly two frames end a message: the last bytes of each.
                let ends: Vec<usize> = out
                    .iter()
                    .scan(0, |at, (p, _)| {
                        *at += p.len();
                        Some(*at)
                    })
                    .zip(&out)
                    .filter(|(_, (_, ends))| *ends)
                    .map(|(at, _)| at)
                    .collect();
                assert_eq!(ends, vec![45, stream.len()], "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn an_oversized_request_message_is_seen_before_any_of_it_passes() {
        let mut stream = message(3);
        stream.extend(message(101));
        let (out, oversized) = cut(&[&stream[..10], &stream[10..]], 100);
        assert_eq!(out, vec![(message(3), true)]);
        assert_eq!(oversized, Some(101));
    }

    #[test]
    fn an_unfinished_request_prefix_is_returned_at_the_end() {
        let mut c = MessageCutter::default();
        c.push(Bytes::from_static(&[0, 0]));
        assert_eq!(c.next(100), Cut::NeedMore);
        c.push(Bytes::from_static(&[0]));
        assert_eq!(c.next(100), Cut::NeedMore);
        assert_eq!(c.take_unfinished(), Some(Bytes::from_static(&[0, 0, 0])));
        assert_eq!(c.take_unfinished(), None);
    }
}
