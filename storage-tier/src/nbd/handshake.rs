//! Newstyle fixed handshake and option haggling.

use std::io::{Read, Write};

use super::proto::*;
use super::{Export, NbdError};
use crate::BlockBackend;

/// Longest option payload we read (names are short; anything bigger is an attack or a bug).
const MAX_OPTION_LEN: u32 = 64 << 10;

/// How the handshake ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Transmission,
    /// The client aborted cleanly.
    Closed,
}

/// Transmission flags for `export`.
pub fn transmission_flags(export: &Export) -> u16 {
    let mut flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_CAN_MULTI_CONN;
    if export.read_only {
        flags |= TFLAG_READ_ONLY;
    } else {
        flags |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
    }
    flags
}

fn read_u32<S: Read>(stream: &mut S) -> Result<u32, NbdError> {
    let mut b = [0u8; 4];
    stream.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn option_reply<S: Write>(
    stream: &mut S,
    option: u32,
    reply: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    stream.write_all(&out)?;
    Ok(())
}

/// Runs the handshake until the client enters transmission or leaves.
pub fn negotiate<S: Read + Write>(stream: &mut S, export: &Export) -> Result<Outcome, NbdError> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&greeting)?;
    let client_flags = read_u32(stream)?;
    if client_flags & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let no_zeroes = client_flags & CLIENT_FLAG_NO_ZEROES != 0;
    loop {
        let mut header = [0u8; 16];
        stream.read_exact(&mut header)?;
        let magic = u64::from_be_bytes(header[0..8].try_into().unwrap_or_default());
        let option = u32::from_be_bytes(header[8..12].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(header[12..16].try_into().unwrap_or_default());
        if magic != IHAVEOPT {
            return Err(NbdError::Protocol(format!("bad option magic {magic:#x}")));
        }
        if len > MAX_OPTION_LEN {
            return Err(NbdError::Protocol(format!(
                "option {option} carries {len} bytes"
            )));
        }
        let mut data = vec![0u8; len as usize];
        stream.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                if !export.matches(&name) {
                    // This option has no error reply: the protocol says to close.
                    return Err(NbdError::UnknownExport(name));
                }
                let mut reply = Vec::with_capacity(134);
                reply.extend_from_slice(&export.volume.size().to_be_bytes());
                reply.extend_from_slice(&transmission_flags(export).to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                stream.write_all(&reply)?;
                return Ok(Outcome::Transmission);
            }
            OPT_ABORT => {
                // The client may already have gone; a failed ACK is not an error worth reporting.
                let _ = option_reply(stream, option, REP_ACK, &[]);
                return Ok(Outcome::Closed);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(
                        stream,
                        option,
                        REP_ERR_INVALID,
                        b"NBD_OPT_LIST takes no data",
                    )?;
                    continue;
                }
                let mut entry = (export.name.len() as u32).to_be_bytes().to_vec();
                entry.extend_from_slice(export.name.as_bytes());
                option_reply(stream, option, REP_SERVER, &entry)?;
                option_reply(stream, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, requests)) = parse_info_request(&data) else {
                    option_reply(stream, option, REP_ERR_INVALID, b"malformed info request")?;
                    continue;
                };
                if !export.matches(&name) {
                    option_reply(stream, option, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                send_info(stream, option, export, &requests)?;
                option_reply(stream, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(Outcome::Transmission);
                }
            }
            _ => option_reply(stream, option, REP_ERR_UNSUP, b"option not supported")?,
        }
    }
}

fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(data.get(4..4 + name_len)?)
        .ok()?
        .to_string();
    let rest = data.get(4 + name_len..)?;
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let list = rest.get(2..)?;
    if list.len() != count * 2 {
        return None;
    }
    Some((
        name,
        list.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    ))
}

fn send_info<S: Write>(
    stream: &mut S,
    option: u32,
    export: &Export,
    requests: &[u16],
) -> Result<(), NbdError> {
    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
    info.extend_from_slice(&export.volume.size().to_be_bytes());
    info.extend_from_slice(&transmission_flags(export).to_be_bytes());
    option_reply(stream, option, REP_INFO, &info)?;
    let mut block = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for value in [MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD] {
        block.extend_from_slice(&value.to_be_bytes());
    }
    option_reply(stream, option, REP_INFO, &block)?;
    if requests.contains(&INFO_NAME) {
        let mut name = INFO_NAME.to_be_bytes().to_vec();
        name.extend_from_slice(export.name.as_bytes());
        option_reply(stream, option, REP_INFO, &name)?;
    }
    if requests.contains(&INFO_DESCRIPTION) {
        let mut description = INFO_DESCRIPTION.to_be_bytes().to_vec();
        description.extend_from_slice(export.description.as_bytes());
        option_reply(stream, option, REP_INFO, &description)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::TierSpec;
    use crate::volume::Volume;
    use std::os::unix::net::UnixStream;

    fn export(dir: &std::path::Path) -> Export {
        let tiers = vec![TierSpec {
            name: "t".into(),
            path: dir.join("t"),
            capacity: 1 << 20,
        }];
        let volume = Volume::create(&dir.join("vol"), 1 << 20, 65536, tiers).unwrap();
        Export {
            name: "disk".into(),
            description: "test disk".into(),
            volume,
            read_only: false,
        }
    }

    fn send_option(stream: &mut UnixStream, option: u32, data: &[u8]) {
        let mut out = IHAVEOPT.to_be_bytes().to_vec();
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        stream.write_all(&out).unwrap();
    }

    /// Reads one option reply: (option, reply type, payload).
    fn read_reply(stream: &mut UnixStream) -> (u32, u32, Vec<u8>) {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).unwrap();
        assert_eq!(header[0..8], OPTION_REPLY_MAGIC.to_be_bytes());
        let field = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
        let mut data = vec![0u8; field(16) as usize];
        stream.read_exact(&mut data).unwrap();
        (field(8), field(12), data)
    }

    fn info_request(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for info in infos {
            data.extend_from_slice(&info.to_be_bytes());
        }
        data
    }

    #[test]
    fn test_negotiate_list_info_unsupported_and_abort() {
        let dir = tempfile::tempdir().unwrap();
        let export = export(dir.path());
        let (mut server_end, mut client) = UnixStream::pair().unwrap();
        std::thread::scope(|scope| {
            let server = scope.spawn(|| negotiate(&mut server_end, &export));
            let mut greeting = [0u8; 18];
            client.read_exact(&mut greeting).unwrap();
            assert_eq!(
                greeting[16..18],
                (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes()
            );
            client
                .write_all(&CLIENT_FLAG_FIXED_NEWSTYLE.to_be_bytes())
                .unwrap();

            send_option(&mut client, OPT_LIST, &[]);
            let (option, reply, data) = read_reply(&mut client);
            assert_eq!((option, reply), (OPT_LIST, REP_SERVER));
            assert_eq!(data, [&4u32.to_be_bytes()[..], b"disk"].concat());
            assert_eq!(read_reply(&mut client).1, REP_ACK);

            send_option(&mut client, OPT_INFO, &info_request("nope", &[]));
            assert_eq!(read_reply(&mut client).1, REP_ERR_UNKNOWN);

            send_option(&mut client, OPT_INFO, &info_request("disk", &[INFO_NAME]));
            let (_, reply, data) = read_reply(&mut client);
            assert_eq!(reply, REP_INFO);
            assert_eq!(data[0..2], INFO_EXPORT.to_be_bytes());
            assert_eq!(data[2..10], (1u64 << 20).to_be_bytes());
            let (_, _, block) = read_reply(&mut client);
            assert_eq!(block[0..2], INFO_BLOCK_SIZE.to_be_bytes());
            assert_eq!(
                block[2..14],
                [MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD]
                    .map(u32::to_be_bytes)
                    .concat()
            );
            let (_, _, name) = read_reply(&mut client);
            assert_eq!(name, [&INFO_NAME.to_be_bytes()[..], b"disk"].concat());
            assert_eq!(read_reply(&mut client).1, REP_ACK);

            send_option(&mut client, 99, b"whatever");
            assert_eq!(read_reply(&mut client).1, REP_ERR_UNSUP);

            send_option(&mut client, OPT_ABORT, &[]);
            assert_eq!(read_reply(&mut client).1, REP_ACK);
            assert_eq!(server.join().unwrap().unwrap(), Outcome::Closed);
        });
    }

    #[test]
    fn test_negotiate_export_name_sends_zero_padding_unless_declined() {
        let dir = tempfile::tempdir().unwrap();
        let export = export(dir.path());
        for (client_flags, expected_len) in [
            (CLIENT_FLAG_FIXED_NEWSTYLE, 10 + 124),
            (CLIENT_FLAG_NO_ZEROES, 10),
        ] {
            let (mut server_end, mut client) = UnixStream::pair().unwrap();
            let export = &export;
            let outcome = std::thread::scope(|scope| {
                // The server end moves into the thread and closes when negotiation returns.
                let server = scope.spawn(move || negotiate(&mut server_end, export));
                let mut greeting = [0u8; 18];
                client.read_exact(&mut greeting).unwrap();
                client.write_all(&client_flags.to_be_bytes()).unwrap();
                send_option(&mut client, OPT_EXPORT_NAME, b"");
                let outcome = server.join().unwrap().unwrap();
                let mut reply = Vec::new();
                client.read_to_end(&mut reply).unwrap();
                assert_eq!(reply.len(), expected_len);
                assert_eq!(reply[0..8], (1u64 << 20).to_be_bytes());
                outcome
            });
            assert_eq!(outcome, Outcome::Transmission);
        }
    }

    #[test]
    fn test_parse_info_request_validates_lengths() {
        let mut data = 3u32.to_be_bytes().to_vec();
        data.extend_from_slice(b"abc");
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&data),
            Some(("abc".to_string(), vec![INFO_BLOCK_SIZE]))
        );
        assert_eq!(parse_info_request(&data[..data.len() - 1]), None);
        assert_eq!(parse_info_request(&[0, 0, 0, 9, b'x']), None);
    }
}
