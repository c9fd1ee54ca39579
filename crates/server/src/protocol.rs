//! What each protocol is, as data: whether it runs over TLS, the ALPN identifiers it offers,
//! which wire a connection speaks once any handshake is done, and how a connection the pool did
//! not admit is turned away. The rest of the crate reads these facts instead of matching on the
//! protocol; only `server.rs` matches, on the [`Wire`].
//!
//! This module imports nothing of this crate.

/// The protocols a server can speak (the config file's `protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 over TCP.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// WebSocket over TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
    /// HTTP/2: h2c with prior knowledge, or h2 over TLS (ALPN, with HTTP/1.1 as the fallback)
    /// when a certificate is configured.
    Http2,
    /// gRPC on HTTP/2: in the clear (prior knowledge), or over TLS (ALPN `h2`) when a
    /// certificate is configured.
    Grpc,
}

/// Whether a protocol runs over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsUse {
    /// Never: a certificate in its config is an error.
    Never,
    /// When a certificate is configured; in the clear otherwise.
    Optional,
    /// Always: without a configured certificate a self-signed one is made at start-up.
    Always,
}

/// What a connection speaks once any TLS handshake is done: the one thing the dispatch matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1 requests, upgrades taken over by the handler.
    Http1,
    /// HTTP/2 streams (HTTP/2 prior knowledge in the clear, ALPN `h2` over TLS).
    Http2,
    /// An HTTP/1.1 upgrade to WebSocket, then the WebSocket session.
    WebSocket,
}

/// How a connection the pool refused is turned away in the clear (over TLS it is always closed
/// before the handshake, as answering would need the very handshake being refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReply {
    /// A fixed HTTP/1.1 `503`: the peer speaks HTTP/1 first and can read it.
    Http503,
    /// Closed at once: the peer speaks first in a framing a 503 would break (HTTP/2's preface).
    Close,
}

/// An ALPN identifier a protocol offers over TLS, and the wire it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alpn {
    /// The identifier, e.g. `h2`.
    pub id: &'static [u8],
    /// The wire a connection that negotiated it speaks.
    pub wire: Wire,
}

const H2: Alpn = Alpn {
    id: b"h2",
    wire: Wire::Http2,
};
const HTTP11: Alpn = Alpn {
    id: b"http/1.1",
    wire: Wire::Http1,
};
const HTTP11_WEBSOCKET: Alpn = Alpn {
    id: b"http/1.1",
    wire: Wire::WebSocket,
};

/// The facts of one protocol: a row of [`PROTOCOLS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolFacts {
    /// The protocol.
    pub protocol: Protocol,
    /// Its label in config, metrics and events.
    pub name: &'static str,
    /// Whether it runs over TLS.
    pub tls: TlsUse,
    /// The wire of a connection in the clear.
    pub clear_wire: Wire,
    /// What it offers over TLS, most preferred first.
    pub alpn: &'static [Alpn],
    /// The wire over TLS when the client negotiated no ALPN identifier.
    pub tls_default_wire: Wire,
    /// How a refused connection in the clear is turned away.
    pub refusal: RefusalReply,
}

/// Every protocol, in [`Protocol`] order.
pub const PROTOCOLS: [ProtocolFacts; 6] = [
    ProtocolFacts {
        protocol: Protocol::Http,
        name: "http",
        tls: TlsUse::Never,
        clear_wire: Wire::Http1,
        alpn: &[HTTP11],
        tls_default_wire: Wire::Http1,
        refusal: RefusalReply::Http503,
    },
    ProtocolFacts {
        protocol: Protocol::Https,
        name: "https",
        tls: TlsUse::Always,
        clear_wire: Wire::Http1,
        alpn: &[HTTP11],
        tls_default_wire: Wire::Http1,
        refusal: RefusalReply::Http503,
    },
    ProtocolFacts {
        protocol: Protocol::Ws,
        name: "ws",
        tls: TlsUse::Never,
        clear_wire: Wire::WebSocket,
        alpn: &[HTTP11_WEBSOCKET],
        tls_default_wire: Wire::WebSocket,
        refusal: RefusalReply::Http503,
    },
    ProtocolFacts {
        protocol: Protocol::Wss,
        name: "wss",
        tls: TlsUse::Always,
        clear_wire: Wire::WebSocket,
        alpn: &[HTTP11_WEBSOCKET],
        tls_default_wire: Wire::WebSocket,
        refusal: RefusalReply::Http503,
    },
    ProtocolFacts {
        protocol: Protocol::Http2,
        name: "http2",
        tls: TlsUse::Optional,
        clear_wire: Wire::Http2,
        alpn: &[H2, HTTP11],
        // A client that named nothing gets what every TLS client can speak.
        tls_default_wire: Wire::Http1,
        refusal: RefusalReply::Close,
    },
    ProtocolFacts {
        protocol: Protocol::Grpc,
        name: "grpc",
        tls: TlsUse::Optional,
        clear_wire: Wire::Http2,
        // gRPC needs HTTP/2: no HTTP/1.1 fallback to offer, and a client that skipped ALPN
        // still gets HTTP/2.
        alpn: &[H2],
        tls_default_wire: Wire::Http2,
        refusal: RefusalReply::Close,
    },
];

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 6] = [
        Protocol::Http,
        Protocol::Https,
        Protocol::Ws,
        Protocol::Wss,
        Protocol::Http2,
        Protocol::Grpc,
    ];

    /// This protocol's row of [`PROTOCOLS`].
    pub const fn facts(self) -> &'static ProtocolFacts {
        &PROTOCOLS[self as usize]
    }

    /// The label used in config, metrics and events.
    pub const fn as_str(self) -> &'static str {
        self.facts().name
    }

    /// The protocol a config file names, if any.
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Whether the protocol always runs over TLS.
    pub const fn is_tls(self) -> bool {
        matches!(self.facts().tls, TlsUse::Always)
    }

    /// Whether the protocol can run over TLS (always, or when a certificate is configured).
    pub const fn accepts_tls(self) -> bool {
        !matches!(self.facts().tls, TlsUse::Never)
    }

    /// The ALPN identifiers offered over TLS, most preferred first.
    pub fn alpn_ids(self) -> Vec<&'static [u8]> {
        self.facts().alpn.iter().map(|a| a.id).collect()
    }

    /// The wire of a connection: in the clear (`tls` false), or over TLS with the identifier
    /// the handshake negotiated.
    pub fn wire(self, tls: bool, alpn: Option<&[u8]>) -> Wire {
        let facts = self.facts();
        if !tls {
            return facts.clear_wire;
        }
        alpn.and_then(|id| facts.alpn.iter().find(|a| a.id == id))
            .map_or(facts.tls_default_wire, |a| a.wire)
    }

    /// How a refused connection is turned away, in the clear or over TLS.
    pub const fn refusal(self, tls: bool) -> RefusalReply {
        if tls {
            RefusalReply::Close
        } else {
            self.facts().refusal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_enum_order_and_names_are_unique() {
        for (i, p) in Protocol::ALL.into_iter().enumerate() {
            assert_eq!(PROTOCOLS[i].protocol, p);
            assert_eq!(Protocol::from_name(p.as_str()), Some(p));
        }
        assert_eq!(Protocol::from_name("gopher"), None);
    }

    #[test]
    fn every_wire_by_tls_and_alpn() {
        use Wire::*;
        assert_eq!(Protocol::Http.wire(false, None), Http1);
        assert_eq!(Protocol::Https.wire(true, Some(b"http/1.1")), Http1);
        assert_eq!(Protocol::Https.wire(true, None), Http1);
        assert_eq!(Protocol::Ws.wire(false, None), WebSocket);
        assert_eq!(Protocol::Wss.wire(true, None), WebSocket);
        assert_eq!(Protocol::Http2.wire(false, None), Http2);
        assert_eq!(Protocol::Http2.wire(true, Some(b"h2")), Http2);
        assert_eq!(Protocol::Http2.wire(true, Some(b"http/1.1")), Http1);
        assert_eq!(Protocol::Http2.wire(true, None), Http1);
        assert_eq!(Protocol::Grpc.wire(false, None), Http2);
        assert_eq!(Protocol::Grpc.wire(true, Some(b"h2")), Http2);
        assert_eq!(Protocol::Grpc.wire(true, None), Http2);
    }

    #[test]
    fn tls_use_and_refusals() {
        assert!(Protocol::Https.is_tls() && Protocol::Wss.is_tls());
        assert!(!Protocol::Http2.is_tls() && Protocol::Http2.accepts_tls());
        assert!(Protocol::Grpc.accepts_tls() && !Protocol::Http.accepts_tls());
        assert!(!Protocol::Ws.accepts_tls());
        assert_eq!(Protocol::Http.refusal(false), RefusalReply::Http503);
        assert_eq!(Protocol::Ws.refusal(false), RefusalReply::Http503);
        assert_eq!(Protocol::Http2.refusal(false), RefusalReply::Close);
        assert_eq!(Protocol::Grpc.refusal(false), RefusalReply::Close);
        for p in Protocol::ALL {
            assert_eq!(p.refusal(true), RefusalReply::Close);
        }
        assert_eq!(Protocol::Http2.alpn_ids(), [&b"h2"[..], b"http/1.1"]);
        assert_eq!(Protocol::Grpc.alpn_ids(), [&b"h2"[..]]);
    }
}
