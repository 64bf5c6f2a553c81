//! NBD server (newstyle, fixed handshake) for one volume.
//!
//! Protocol reference: <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.
//! Supported: `NBD_OPT_EXPORT_NAME`, `NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_LIST`, `NBD_OPT_ABORT`
//! (others get `NBD_REP_ERR_UNSUP`), block size constraints, simple replies for READ, WRITE (with FUA),
//! FLUSH, TRIM, WRITE_ZEROES and DISC. Every client has its own thread; a malformed handshake or request
//! closes that client only, with a log line.

pub mod client;
pub mod handshake;
pub mod proto;
pub mod transmission;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use crate::engine::EngineKind;
use crate::volume::Volume;

/// Why a client connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("connection I/O failed")]
    Io(#[source] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("client asked for unknown export {0:?}")]
    UnknownExport(String),
    #[error("io_uring setup failed")]
    Uring(#[source] io::Error),
}

impl From<io::Error> for NbdError {
    fn from(error: io::Error) -> Self {
        NbdError::Io(error)
    }
}

/// What the server offers.
#[derive(Debug)]
pub struct Export {
    pub name: String,
    pub description: String,
    pub volume: Volume,
    pub read_only: bool,
}

impl Export {
    /// The empty name selects the default (only) export, as the protocol allows.
    pub fn matches(&self, requested: &str) -> bool {
        requested.is_empty() || requested == self.name
    }
}

/// A connected client socket.
pub trait NbdStream: Read + Write + AsRawFd + Send + 'static {
    /// Shuts both directions down, which also completes any pending receive.
    fn close(&self);
    fn describe(&self) -> String;
}

impl NbdStream for UnixStream {
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
    fn describe(&self) -> String {
        "unix client".into()
    }
}

impl NbdStream for TcpStream {
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
    fn describe(&self) -> String {
        self.peer_addr()
            .map_or_else(|_| "tcp client".into(), |a| format!("tcp client {a}"))
    }
}

/// Runs one client to completion, logging how it ended.
pub fn handle_client<S: NbdStream>(mut stream: S, export: &Export, engine: EngineKind) {
    let peer = stream.describe();
    tracing::info!(%peer, "client connected");
    let result = handshake::negotiate(&mut stream, export).and_then(|outcome| match outcome {
        handshake::Outcome::Transmission => transmission::run(stream, export, engine),
        handshake::Outcome::Closed => Ok(()),
    });
    match result {
        Ok(()) => tracing::info!(%peer, "client disconnected"),
        Err(error) => tracing::warn!(%peer, error = %error_chain(&error), "closing client"),
    }
}

/// `error: cause: cause` on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Accepts Unix-socket clients forever, one thread each.
pub fn serve_unix(
    listener: UnixListener,
    export: Arc<Export>,
    engine: EngineKind,
) -> io::Result<()> {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => spawn_client(stream, export.clone(), engine)?,
            Err(error) => tracing::warn!(error = %error, "accept failed"),
        }
    }
    Ok(())
}

/// Accepts TCP clients forever, one thread each.
pub fn serve_tcp(listener: TcpListener, export: Arc<Export>, engine: EngineKind) -> io::Result<()> {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                spawn_client(stream, export.clone(), engine)?
            }
            Err(error) => tracing::warn!(error = %error, "accept failed"),
        }
    }
    Ok(())
}

fn spawn_client<S: NbdStream>(
    stream: S,
    export: Arc<Export>,
    engine: EngineKind,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("nbd-client".into())
        .spawn(move || handle_client(stream, &export, engine))
        .map(|_| ())
}
