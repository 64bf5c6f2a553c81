//! The per-VM API: HTTP/1.1 + JSON on a Unix socket, like Firecracker and Cloud Hypervisor.
//!
//! | method | path           | action                         | success          |
//! |--------|----------------|--------------------------------|------------------|
//! | GET    | /vm            | state, vCPUs, memory, boot time| 200 + `VmInfo`   |
//! | PUT    | /vm/pause      | stop running vCPUs (idempotent)| 204              |
//! | PUT    | /vm/resume     | run again (idempotent)         | 204              |
//! | PUT    | /vm/shutdown   | orderly stop, process exits 0  | 204              |
//!
//! Errors: 404 unknown path, 405 wrong method, 400 malformed request, 500 VMM failure; the body
//! is `{"error": "..."}`. HTTP only maps requests to [`VmAction`]s; the VMM thread executes them.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Sender};

use serde::Serialize;

use crate::event::VmmEvent;

/// What an API request asks the VMM to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    GetInfo,
    Pause,
    Resume,
    Shutdown,
}

/// Run state as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    ShuttingDown,
}

/// `GET /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    pub state: VmState,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Microseconds from process start to the guest's boot marker; null until it is written.
    pub boot_time_us: Option<u64>,
}

/// The VMM thread's answer.
#[derive(Debug)]
pub enum ApiReply {
    Info(VmInfo),
    Done,
    Failed(String),
}

/// Errors of the API server and of request routing.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no such resource: {0}")]
    NotFound(String),
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("the API socket path {path} is in use by a running process")]
    SocketInUse { path: PathBuf },
    #[error("cannot listen on API socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the API thread")]
    Thread(#[source] std::io::Error),
}

impl ApiError {
    /// The HTTP status for this error (one place maps kinds to statuses).
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::BadRequest(_) => 400,
            _ => 500,
        }
    }
}

/// Maps `(method, path)` to an action.
pub fn route(method: &str, path: &str) -> Result<VmAction, ApiError> {
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    let (action, allowed) = match path {
        "/vm" => (VmAction::GetInfo, "GET"),
        "/vm/pause" => (VmAction::Pause, "PUT"),
        "/vm/resume" => (VmAction::Resume, "PUT"),
        "/vm/shutdown" => (VmAction::Shutdown, "PUT"),
        _ => return Err(ApiError::NotFound(path.to_string())),
    };
    if method == allowed {
        Ok(action)
    } else {
        Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
        })
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    }
}

fn write_response(
    stream: &mut UnixStream,
    status: u16,
    body: Option<String>,
) -> std::io::Result<()> {
    let body = body.unwrap_or_default();
    let content = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/json\r\n".to_string()
    };
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\n{content}Content-Length: {}\r\n\r\n{body}",
        reason_phrase(status),
        body.len()
    )?;
    stream.flush()
}

fn error_body(message: &str) -> Option<String> {
    Some(serde_json::json!({ "error": message }).to_string())
}

/// A parsed request head.
struct RequestHead {
    method: String,
    path: String,
    content_length: usize,
    close: bool,
}

const MAX_HEAD_BYTES: usize = 8192;
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Reads one request head; `Ok(None)` at a clean end of stream.
fn read_head(reader: &mut BufReader<UnixStream>) -> Result<Option<RequestHead>, ApiError> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader
            .read_until(b'\n', &mut head)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(ApiError::BadRequest("connection closed mid-request".into()))
            };
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(ApiError::BadRequest("request head too large".into()));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ApiError::BadRequest("incomplete request".into()))
        }
        Err(e) => return Err(ApiError::BadRequest(e.to_string())),
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let content_length = match header("content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("bad Content-Length {v:?}")))?,
        None => 0,
    };
    if content_length > MAX_BODY_BYTES {
        return Err(ApiError::BadRequest("body too large".into()));
    }
    Ok(Some(RequestHead {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        content_length,
        close: header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")),
    }))
}

/// Serves one connection until the client closes it or asks to close.
fn serve_connection(stream: UnixStream, events: &Sender<VmmEvent>) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let head = match read_head(&mut reader) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(e) => return write_response(&mut writer, e.status(), error_body(&e.to_string())),
        };
        // Bodies are accepted (e.g. `{}` from curl -d) but no action takes parameters yet.
        let mut body = vec![0u8; head.content_length];
        reader.read_exact(&mut body)?;
        let action = match route(&head.method, &head.path) {
            Ok(action) => action,
            Err(e) => {
                write_response(&mut writer, e.status(), error_body(&e.to_string()))?;
                if head.close {
                    return Ok(());
                }
                continue;
            }
        };
        if action == VmAction::Shutdown {
            // Answer first: the process exits as soon as the VMM thread sees the request.
            write_response(&mut writer, 204, None)?;
        }
        let (reply_tx, reply_rx) = sync_channel(1);
        if events
            .send(VmmEvent::Api {
                action,
                reply: reply_tx,
            })
            .is_err()
        {
            return write_response(&mut writer, 500, error_body("the VMM is stopping"));
        }
        if action == VmAction::Shutdown {
            return Ok(());
        }
        let (status, body) = match reply_rx.recv() {
            Ok(ApiReply::Info(info)) => (200, serde_json::to_string(&info).ok()),
            Ok(ApiReply::Done) => (204, None),
            Ok(ApiReply::Failed(message)) => (500, error_body(&message)),
            Err(_) => (500, error_body("the VMM is stopping")),
        };
        write_response(&mut writer, status, body)?;
        if head.close {
            return Ok(());
        }
    }
}

/// The listening socket; removes its file when dropped.
#[derive(Debug)]
pub struct ApiSocket {
    path: PathBuf,
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ApiSocket {
    /// Removes the socket file (for exit paths that skip destructors).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if path.exists() {
        // A leftover file from a VMM that died is replaced; a live one is not stolen.
        if UnixStream::connect(path).is_ok() {
            return Err(ApiError::SocketInUse {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Binds `path` and serves requests on a thread of its own, one connection at a time.
pub fn spawn_api_server(path: &Path, events: Sender<VmmEvent>) -> Result<ApiSocket, ApiError> {
    let listener = bind(path)?;
    std::thread::Builder::new()
        .name("hv-api".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // A client that misbehaves only loses its own connection.
                let _ = serve_connection(stream, &events);
            }
        })
        .map_err(ApiError::Thread)?;
    Ok(ApiSocket {
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_route_maps_methods_and_paths() {
        assert_eq!(route("GET", "/vm").unwrap(), VmAction::GetInfo);
        assert_eq!(route("GET", "/vm/").unwrap(), VmAction::GetInfo);
        assert_eq!(route("PUT", "/vm/pause").unwrap(), VmAction::Pause);
        assert_eq!(route("PUT", "/vm/resume").unwrap(), VmAction::Resume);
        assert_eq!(route("PUT", "/vm/shutdown").unwrap(), VmAction::Shutdown);
        assert_eq!(route("GET", "/vm/pause").unwrap_err().status(), 405);
        assert_eq!(route("PUT", "/vm").unwrap_err().status(), 405);
        assert_eq!(route("GET", "/nope").unwrap_err().status(), 404);
    }

    #[test]
    fn test_server_answers_over_socket_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (tx, rx) = std::sync::mpsc::channel();
        let _socket = spawn_api_server(&path, tx).unwrap();
        // A fake VMM thread answering GetInfo.
        std::thread::spawn(move || {
            while let Ok(VmmEvent::Api { reply, .. }) = rx.recv() {
                let _ = reply.send(ApiReply::Info(VmInfo {
                    state: VmState::Running,
                    vcpus: 2,
                    memory_mib: 128,
                    boot_time_us: Some(42),
                }));
            }
        });
        let mut garbage = UnixStream::connect(&path).unwrap();
        garbage.write_all(b"\x00\x01 not http\r\n\r\n").unwrap();
        let mut answer = String::new();
        garbage.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

        let mut client = UnixStream::connect(&path).unwrap();
        client
            .write_all(b"GET /vm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(
            answer.ends_with(r#"{"state":"running","vcpus":2,"memory_mib":128,"boot_time_us":42}"#)
        );
    }

    #[test]
    fn test_bind_refuses_live_socket_and_replaces_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let live = UnixListener::bind(&path).unwrap();
        assert!(matches!(bind(&path), Err(ApiError::SocketInUse { .. })));
        drop(live); // file stays, nobody listens
        assert!(bind(&path).is_ok());
    }
}
