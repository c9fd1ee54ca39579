//! Refusing a connection the pool did not admit, before any protocol work.
//!
//! Plain HTTP gets a fixed `503` written straight onto the fresh socket without reading the
//! request, so clients see why; TLS connections are simply closed, as answering would need the
//! very handshake we refuse to pay for.
//!
//! Closing a socket with unread request bytes makes the kernel send a reset, which can destroy
//! the 503 before the client reads it. So after writing, the socket's send side is shut and the
//! request is read and discarded for a short, bounded time. At most [`MAX_LINGERING`] refused
//! sockets linger at once; past that they are closed at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The response sent to a refused plain-HTTP connection.
pub const REFUSAL_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain\r\n\
content-length: 31\r\n\
retry-after: 1\r\n\
connection: close\r\n\
\r\n\
server at its connection limit\n";

/// Refused sockets allowed to linger at once.
pub const MAX_LINGERING: usize = 256;
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

/// Writes the 503 and closes, lingering briefly when a slot is free.
#[derive(Debug, Clone)]
pub(crate) struct Refuser {
    lingering: Arc<Semaphore>,
}

impl Default for Refuser {
    fn default() -> Self {
        Refuser {
            lingering: Arc::new(Semaphore::new(MAX_LINGERING)),
        }
    }
}

impl Refuser {
    /// Refuses a plain-HTTP connection with a 503.
    pub fn refuse_http(&self, stream: TcpStream) {
        // A fresh socket's send buffer is empty, so this never waits; a short write just
        // means the peer is already gone.
        let _ = stream.try_write(REFUSAL_503);
        let Ok(permit) = self.lingering.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let mut stream = stream;
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 4096];
            let mut read = 0;
            let _ = tokio::time::timeout(LINGER_TIME, async {
                while read < LINGER_BYTES {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            })
            .await;
        });
    }
}
