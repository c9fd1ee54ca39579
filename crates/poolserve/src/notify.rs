//! systemd's readiness protocol (`sd_notify`): when systemd started the process with
//! `Type=notify`, it passes a datagram socket in `NOTIFY_SOCKET`; the process sends `READY=1`
//! once it serves, and after a binary upgrade the old process names the new main process with
//! `MAINPID=` before it exits, so systemd follows the new one instead of stopping the service.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (`READY=1`, `MAINPID=1234`) to systemd, if it asked for notifications.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path.to_string_lossy(), state) {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

fn send(path: &str, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    // An address starting with '@' is in Linux's abstract namespace.
    #[cfg(target_os = "linux")]
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
        return Ok(());
    }
    socket.send_to(state.as_bytes(), path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_state_reaches_the_socket_named() {
        let dir = std::env::temp_dir().join(format!("poolserve-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::send(&path.to_string_lossy(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("poolserve-notify-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let abstract_systemd = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
            super::send(&format!("@{name}"), "MAINPID=42").unwrap();
            let n = abstract_systemd.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"MAINPID=42");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
