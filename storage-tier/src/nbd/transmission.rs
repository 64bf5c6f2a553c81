//! Transmission phase: requests in, simple replies out.

use super::proto::*;
use super::{Export, NbdError, NbdStream};
use crate::engine::EngineKind;
use crate::{BlockBackend, BlockError};

/// Serves requests until the client disconnects, on io_uring when possible.
pub fn run<S: NbdStream>(stream: S, export: &Export, engine: EngineKind) -> Result<(), NbdError> {
    match engine {
        EngineKind::Sync => run_sync(stream, export),
        EngineKind::Uring => crate::uring::serve_connection(stream, export),
        EngineKind::Auto => {
            if crate::uring::available() {
                crate::uring::serve_connection(stream, export)
            } else {
                run_sync(stream, export)
            }
        }
    }
}

/// The errno for a failed request, logged once.
pub fn errno_of(error: &BlockError, request: &Request) -> u32 {
    if !matches!(error, BlockError::OutOfRange { .. } | BlockError::ReadOnly) {
        tracing::warn!(error = %super::error_chain(error), offset = request.offset, kind = request.kind, "request failed");
    }
    match (error, request.kind) {
        // The protocol asks for ENOSPC when a write reaches past the end.
        (BlockError::OutOfRange { .. }, CMD_WRITE | CMD_WRITE_ZEROES) => libc::ENOSPC as u32,
        _ => error.errno(),
    }
}

/// Executes a request that carries no read data back (everything except READ and WRITE payload I/O).
/// Returns the NBD error code (0 for success).
pub fn execute_control(export: &Export, request: &Request) -> u32 {
    let volume = &export.volume;
    let result = match request.kind {
        CMD_FLUSH => volume.flush(),
        CMD_TRIM if export.read_only => Err(BlockError::ReadOnly),
        CMD_WRITE_ZEROES if export.read_only => Err(BlockError::ReadOnly),
        CMD_TRIM => volume.discard(request.offset, request.length as u64),
        CMD_WRITE_ZEROES => volume.write_zeroes(request.offset, request.length as u64),
        _ => return libc::EINVAL as u32,
    };
    let result = result.and_then(|()| {
        if request.flags & CMD_FLAG_FUA != 0 && request.kind != CMD_FLUSH {
            volume.flush()
        } else {
            Ok(())
        }
    });
    result.err().map_or(0, |error| errno_of(&error, request))
}

/// Checks a READ/WRITE length; an oversized WRITE is a protocol error (its payload cannot be skipped).
pub fn check_length(request: &Request) -> Result<Option<u32>, NbdError> {
    if request.length > MAX_PAYLOAD {
        if request.kind == CMD_WRITE {
            return Err(NbdError::Protocol(format!(
                "write of {} bytes exceeds the maximum",
                request.length
            )));
        }
        return Ok(Some(libc::EINVAL as u32));
    }
    Ok(None)
}

/// One request at a time with pread/pwrite: the fallback where io_uring is unavailable.
pub fn run_sync<S: NbdStream>(mut stream: S, export: &Export) -> Result<(), NbdError> {
    let mut reply = Vec::new();
    loop {
        let mut header = [0u8; REQUEST_LEN];
        match stream.read_exact(&mut header) {
            Ok(()) => {}
            // Some clients just close instead of sending NBD_CMD_DISC; that is not worth a warning.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error.into()),
        }
        let request = Request::parse(&header)
            .ok_or_else(|| NbdError::Protocol("bad request magic".into()))?;
        reply.clear();
        match request.kind {
            CMD_DISC => return Ok(()),
            CMD_READ => {
                if let Some(error) = check_length(&request)? {
                    push_simple_reply(&mut reply, error, request.cookie);
                } else {
                    let mut data = crate::tier::AlignedBuf::zeroed(request.length as usize);
                    match export.volume.read_at(data.as_mut_slice(), request.offset) {
                        Ok(()) => {
                            push_simple_reply(&mut reply, 0, request.cookie);
                            reply.extend_from_slice(data.as_slice());
                        }
                        Err(error) => push_simple_reply(
                            &mut reply,
                            errno_of(&error, &request),
                            request.cookie,
                        ),
                    }
                }
            }
            CMD_WRITE => {
                check_length(&request)?;
                let mut data = crate::tier::AlignedBuf::zeroed(request.length as usize);
                stream.read_exact(data.as_mut_slice())?;
                let result = if export.read_only {
                    Err(BlockError::ReadOnly)
                } else {
                    export
                        .volume
                        .write_at(data.as_slice(), request.offset)
                        .and_then(|()| {
                            if request.flags & CMD_FLAG_FUA != 0 {
                                export.volume.flush()
                            } else {
                                Ok(())
                            }
                        })
                };
                let error = result.err().map_or(0, |error| errno_of(&error, &request));
                push_simple_reply(&mut reply, error, request.cookie);
            }
            _ => push_simple_reply(
                &mut reply,
                execute_control(export, &request),
                request.cookie,
            ),
        }
        stream.write_all(&reply)?;
    }
}
