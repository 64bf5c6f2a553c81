//! A minimal blocking NBD client (fixed newstyle, `NBD_OPT_GO`, simple replies, one request at a time).
//! Used by the crate's tests and the crash test; real-client interoperability is tested with qemu-io,
//! qemu-img and fio.

use std::io::{self, Read, Write};

use super::proto::*;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection I/O failed")]
    Io(#[from] io::Error),
    #[error("server violated the protocol: {0}")]
    Protocol(String),
    #[error("server replied with NBD error {0}")]
    Nbd(u32),
    #[error("server refused the export (option reply {0:#x})")]
    Refused(u32),
}

/// A connected, negotiated client.
#[derive(Debug)]
pub struct NbdClient<S: Read + Write> {
    stream: S,
    pub size: u64,
    pub flags: u16,
    next_cookie: u64,
}

fn read_array<const N: usize, S: Read>(stream: &mut S) -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    stream.read_exact(&mut bytes)?;
    Ok(bytes)
}

impl<S: Read + Write> NbdClient<S> {
    /// Negotiates `export` with `NBD_OPT_GO`.
    pub fn connect(mut stream: S, export: &str) -> Result<NbdClient<S>, ClientError> {
        let greeting: [u8; 18] = read_array(&mut stream)?;
        if greeting[0..8] != NBDMAGIC.to_be_bytes() || greeting[8..16] != IHAVEOPT.to_be_bytes() {
            return Err(ClientError::Protocol("bad greeting".into()));
        }
        stream.write_all(&(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES).to_be_bytes())?;
        let mut data = (export.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut option = IHAVEOPT.to_be_bytes().to_vec();
        option.extend_from_slice(&OPT_GO.to_be_bytes());
        option.extend_from_slice(&(data.len() as u32).to_be_bytes());
        option.extend_from_slice(&data);
        stream.write_all(&option)?;
        let (mut size, mut flags) = (None, 0);
        loop {
            let header: [u8; 20] = read_array(&mut stream)?;
            let reply = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
            let len = u32::from_be_bytes([header[16], header[17], header[18], header[19]]) as usize;
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload)?;
            match reply {
                REP_ACK => break,
                REP_INFO if payload.len() == 12 && payload[0..2] == INFO_EXPORT.to_be_bytes() => {
                    size = Some(u64::from_be_bytes(
                        payload[2..10].try_into().unwrap_or_default(),
                    ));
                    flags = u16::from_be_bytes([payload[10], payload[11]]);
                }
                REP_INFO => {}
                other => return Err(ClientError::Refused(other)),
            }
        }
        let size =
            size.ok_or_else(|| ClientError::Protocol("no NBD_INFO_EXPORT before ACK".into()))?;
        Ok(NbdClient {
            stream,
            size,
            flags,
            next_cookie: 1,
        })
    }

    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let request = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        };
        let mut out = request.encode().to_vec();
        out.extend_from_slice(payload);
        self.stream.write_all(&out)?;
        let reply: [u8; 16] = read_array(&mut self.stream)?;
        if reply[0..4] != SIMPLE_REPLY_MAGIC.to_be_bytes() || reply[8..16] != cookie.to_be_bytes() {
            return Err(ClientError::Protocol("bad reply magic or cookie".into()));
        }
        match u32::from_be_bytes([reply[4], reply[5], reply[6], reply[7]]) {
            0 => Ok(()),
            error => Err(ClientError::Nbd(error)),
        }
    }

    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.request(CMD_READ, 0, offset, buf.len() as u32, &[])?;
        self.stream.read_exact(buf)?;
        Ok(())
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.request(CMD_WRITE, 0, offset, data.len() as u32, data)
    }

    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.request(CMD_FLUSH, 0, 0, 0, &[])
    }

    pub fn trim(&mut self, offset: u64, length: u32) -> Result<(), ClientError> {
        self.request(CMD_TRIM, 0, offset, length, &[])
    }

    pub fn write_zeroes(&mut self, offset: u64, length: u32) -> Result<(), ClientError> {
        self.request(CMD_WRITE_ZEROES, 0, offset, length, &[])
    }

    /// Sends `NBD_CMD_DISC` and drops the connection.
    pub fn disconnect(mut self) -> Result<(), ClientError> {
        let request = Request {
            flags: 0,
            kind: CMD_DISC,
            cookie: 0,
            offset: 0,
            length: 0,
        };
        self.stream.write_all(&request.encode())?;
        Ok(())
    }

    /// The raw stream, for tests that send malformed input.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}
