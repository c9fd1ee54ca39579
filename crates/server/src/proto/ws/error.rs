//! Why a WebSocket connection ended badly, and whether it was the peer's doing.

/// Why a WebSocket connection ended badly.
#[derive(Debug)]
pub struct WsError {
    message: String,
    peer_fault: bool,
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl WsError {
    /// An error with `message`; `peer_fault` when the peer caused it.
    pub(super) fn new(message: impl Into<String>, peer_fault: bool) -> Self {
        WsError {
            message: message.into(),
            peer_fault,
        }
    }

    /// An error the peer caused.
    pub(super) fn peer(message: impl Into<String>) -> Self {
        WsError::new(message, true)
    }

    /// Whether the peer caused it.
    pub fn is_peer_fault(&self) -> bool {
        self.peer_fault
    }
}
