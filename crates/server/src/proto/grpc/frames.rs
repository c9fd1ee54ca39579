//! The gRPC length-prefixed message framing, followed across body chunks so each message's
//! declared length is known before any of its bytes are passed on.

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
}
