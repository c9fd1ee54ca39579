//! Zero-downtime binary upgrade (`SIGUSR2`): the process starts the binary at the path it was
//! started as (which may hold a new binary by now) with the same arguments, and hands it every
//! listening socket, the admin endpoint's included. The new process starts its servers on
//! them and says it is ready; only then does the old one stop accepting and drain. If the new
//! one fails, or is not ready within `drain_timeout`, the old one stops it and serves on.
//!
//! The channel is a `SOCK_SEQPACKET` socket pair. The new process's end is its stdin, so it
//! is inherited with no descriptor number to pass along and rebuilt with no unsafe code; the
//! `POOLSERVE_UPGRADE` environment variable (the old process's id) says what it is. One
//! message per packet:
//!
//! - old to new: `socket NAME` with the socket's descriptor attached (`SCM_RIGHTS`), once per
//!   socket, then `end`;
//! - new to old: `ready`, or `failed REASON`.

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use poolserve_server::{ListeningSocket, Runtime};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// Set in the environment of a process an upgrade starts: the old process's id.
const UPGRADE_ENV: &str = "POOLSERVE_UPGRADE";

/// Longest message on the channel: a server's name and a word.
const MAX_MESSAGE: usize = 4096;

/// How long the new process waits for each socket from the old one.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How this process was started, taken at start: an upgrade starts what is at that path then.
#[derive(Debug, Clone)]
pub(crate) struct Invocation {
    /// `argv[0]` as given (an absolute path, a path relative to the working directory, which
    /// the new process shares, or a name looked up in `PATH`).
    program: OsString,
    args: Vec<OsString>,
}

impl Invocation {
    /// This process's program and arguments.
    pub(crate) fn current() -> io::Result<Invocation> {
        let mut argv = std::env::args_os();
        let program = match argv.next().filter(|p| !p.is_empty()) {
            Some(program) => program,
            None => std::env::current_exe()?.into_os_string(),
        };
        Ok(Invocation {
            program,
            args: argv.collect(),
        })
    }
}

/// Starts the new process on `runtime`'s listening sockets and waits until it is ready, at
/// most `deadline`: its process id then. On an error the new process has been stopped (killed
/// if it still ran, so it accepts no more) and this one goes on serving; the error says why.
pub(crate) async fn start_successor(
    runtime: &Runtime,
    invocation: &Invocation,
    deadline: Duration,
) -> Result<u32, String> {
    let sockets = runtime
        .listening_sockets()
        .map_err(|e| format!("cannot duplicate the listening sockets: {e}"))?;
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| format!("cannot make the hand-over channel: {e}"))?;
    let child = Command::new(&invocation.program)
        .args(&invocation.args)
        .env(UPGRADE_ENV, std::process::id().to_string())
        .stdin(Stdio::from(theirs))
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {}: {e}",
                std::path::Path::new(&invocation.program).display()
            )
        })?;
    let pid = child.id();
    tracing::info!(pid, program = %std::path::Path::new(&invocation.program).display(), sockets = sockets.len(), "upgrade: new process started; handing over the listening sockets");
    // Stops the new process if this future ends without it being ready (an error, a timeout,
    // or SIGTERM here meanwhile, which drops this future).
    let mut successor = Successor(Some(child));
    let handed = tokio::task::spawn_blocking(move || hand_over(&ours, &sockets, deadline));
    match handed.await {
        Ok(Ok(())) => {
            successor.0 = None;
            Ok(pid)
        }
        Ok(Err(why)) => Err(successor.stop(why)),
        Err(e) => Err(successor.stop(format!("the hand-over task failed: {e}"))),
    }
}

/// The new process until it is ready: killed and reaped if dropped before.
struct Successor(Option<Child>);

impl Successor {
    /// Stops the new process (a kill does nothing to one that already ended); `why` it
    /// failed, with how it ended.
    fn stop(&mut self, why: String) -> String {
        let Some(mut child) = self.0.take() else {
            return why;
        };
        let _ = child.kill();
        match child.wait() {
            Ok(status) => format!("{why} (the new process ended: {status})"),
            Err(e) => format!("{why} (the new process could not be reaped: {e})"),
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if self.0.is_some() {
            let why = self.stop("upgrade abandoned".into());
            tracing::warn!(%why, "upgrade: new process stopped");
        }
    }
}

/// Sends every socket, then waits for the new process's answer, all within `deadline`.
fn hand_over(
    channel: &OwnedFd,
    sockets: &[ListeningSocket],
    deadline: Duration,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let late = || {
        format!(
            "the new process was not ready within drain_timeout ({:.3}s)",
            deadline.as_secs_f64()
        )
    };
    let wait = |timeout| {
        let left = deadline.saturating_sub(started.elapsed());
        rustix::net::sockopt::set_socket_timeout(
            channel,
            timeout,
            Some(left.max(Duration::from_millis(1))),
        )
        .map_err(|e| format!("cannot time the hand-over: {e}"))
    };
    wait(rustix::net::sockopt::Timeout::Send)?;
    for s in sockets {
        let message = format!("socket {}", s.name);
        let fds = [s.socket.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            channel,
            &[IoSlice::new(message.as_bytes())],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => late(),
            _ => format!("cannot send the socket of {}: {e}", s.name),
        })?;
    }
    send(channel, "end").map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => late(),
        _ => format!("cannot send the end of the sockets: {e}"),
    })?;
    wait(rustix::net::sockopt::Timeout::Recv)?;
    match receive(channel) {
        Ok(Some((message, _))) if message == "ready" => Ok(()),
        Ok(Some((message, _))) => match message.strip_prefix("failed ") {
            Some(reason) => Err(format!("the new process failed: {reason}")),
            None => Err(format!(
                "unexpected answer from the new process: {message:?}"
            )),
        },
        Ok(None) => Err("the new process closed the channel before it was ready".into()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(late()),
        Err(e) => Err(format!("cannot read the new process's answer: {e}")),
    }
}

/// Sends one message with no descriptor.
fn send(channel: impl AsFd, message: &str) -> io::Result<()> {
    rustix::net::send(channel, message.as_bytes(), SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Receives one message and the descriptor it carries, if any; `None` at the end of the
/// stream (the other side closed).
fn receive(channel: impl AsFd) -> io::Result<Option<(String, Option<OwnedFd>)>> {
    let mut data = [0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        channel,
        &mut [IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            // One descriptor per message is sent; any other is closed as it drops.
            for received in fds {
                fd.get_or_insert(received);
            }
        }
    }
    if got.bytes == 0 && fd.is_none() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&data[..got.bytes.min(MAX_MESSAGE)]).into_owned();
    Ok(Some((text, fd)))
}

/// In a process an upgrade started: the channel to the process it replaces.
#[derive(Debug)]
pub(crate) struct Predecessor {
    channel: OwnedFd,
    /// The old process's id.
    pub(crate) pid: String,
}

impl Predecessor {
    /// Tells the old process this one serves: it stops accepting and drains.
    pub(crate) fn ready(self) {
        if let Err(e) = send(&self.channel, "ready") {
            tracing::error!(error = %e, old = %self.pid, "upgrade: cannot tell the old process this one is ready");
        }
    }

    /// Tells the old process this one could not start, and why: it serves on.
    pub(crate) fn failed(self, why: &str) {
        let _ = send(&self.channel, &format!("failed {why}"));
    }
}

/// When this process was started by an upgrade (`POOLSERVE_UPGRADE` set): the channel to the
/// old process and the listening sockets it handed over. Stdin, which held the channel, is
/// then `/dev/null`.
pub(crate) fn receive_sockets() -> Result<Option<(Predecessor, Vec<ListeningSocket>)>, String> {
    let Some(pid) = std::env::var_os(UPGRADE_ENV) else {
        return Ok(None);
    };
    let pid = pid.to_string_lossy().into_owned();
    let channel = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("{UPGRADE_ENV} is set but stdin cannot be read: {e}"))?;
    rustix::net::sockopt::set_socket_timeout(
        &channel,
        rustix::net::sockopt::Timeout::Recv,
        Some(RECEIVE_TIMEOUT),
    )
    .map_err(|e| format!("{UPGRADE_ENV} is set but stdin is not the hand-over channel: {e}"))?;
    let mut sockets = Vec::new();
    loop {
        let (message, fd) = receive(&channel)
            .map_err(|e| format!("cannot receive the listening sockets: {e}"))?
            .ok_or("the old process closed the channel before sending every socket")?;
        if message == "end" {
            break;
        }
        match (message.strip_prefix("socket "), fd) {
            (Some(name), Some(fd)) => sockets.push(ListeningSocket {
                name: name.to_owned(),
                socket: std::net::TcpListener::from(fd),
            }),
            _ => {
                return Err(format!(
                    "unexpected message from the old process: {message:?}"
                ))
            }
        }
    }
    let null = std::fs::File::open("/dev/null")
        .and_then(|null| rustix::stdio::dup2_stdin(&null).map_err(io::Error::from));
    if let Err(e) = null {
        tracing::debug!(error = %e, "stdin left as the hand-over channel");
    }
    Ok(Some((Predecessor { channel, pid }, sockets)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_and_its_name_cross_the_channel() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sockets = vec![ListeningSocket {
            name: "web".into(),
            socket: listener,
        }];
        let sender = std::thread::spawn(move || hand_over(&a, &sockets, Duration::from_secs(10)));
        let (message, fd) = receive(&b).unwrap().unwrap();
        assert_eq!(message, "socket web");
        let received = std::net::TcpListener::from(fd.expect("a descriptor"));
        assert_eq!(received.local_addr().unwrap(), addr);
        assert_eq!(receive(&b).unwrap().unwrap().0, "end");
        send(&b, "ready").unwrap();
        sender.join().unwrap().unwrap();
        // The socket received is the same socket: a connection to it is accepted there.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        received.accept().unwrap();
    }

    #[test]
    fn a_failure_or_a_closed_channel_is_reported() {
        let pair = || {
            rustix::net::socketpair(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )
            .unwrap()
        };
        let (a, b) = pair();
        send(&b, "failed server \"web\": cannot listen").unwrap();
        let err = hand_over(&a, &[], Duration::from_secs(10)).unwrap_err();
        assert_eq!(err, "the new process failed: server \"web\": cannot listen");
        let (a, b) = pair();
        drop(b);
        let err = hand_over(&a, &[], Duration::from_secs(10)).unwrap_err();
        assert!(
            err.contains("cannot send") || err.contains("closed the channel"),
            "{err}"
        );
        let (a, _b) = pair();
        let err = hand_over(&a, &[], Duration::from_millis(50)).unwrap_err();
        assert!(err.contains("not ready within drain_timeout"), "{err}");
    }
}
