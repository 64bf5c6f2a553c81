//! Crash consistency: a `serve` child under random writes, zeroings, flushes and hot reads (so the mover
//! moves extents) is killed with SIGKILL at random moments, many times. After each restart every block
//! must hold its last flushed content or a later write that was sent, never zeros for a flushed block,
//! never another block's data. Seed: HV_CRASH_SEED (printed on failure); rounds: HV_CRASH_ROUNDS.

mod common;

use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use hv_storage::nbd::client::NbdClient;

const BLOCK: usize = 4096;
const VOLUME_SIZE: u64 = 16 << 20;
const BLOCKS: usize = (VOLUME_SIZE as usize) / BLOCK;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Block content for version `seq` (> 0) of `block`: header + deterministic fill.
fn block_data(block: usize, seq: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(BLOCK);
    data.extend_from_slice(&(block as u64).to_le_bytes());
    data.extend_from_slice(&seq.to_le_bytes());
    let mut rng = Rng(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ block as u64 | 1);
    while data.len() < BLOCK {
        data.extend_from_slice(&rng.next().to_le_bytes());
    }
    data
}

/// What a block may contain: `0` stands for zeros.
fn decode(block: usize, data: &[u8]) -> Result<u64, String> {
    if data.iter().all(|&b| b == 0) {
        return Ok(0);
    }
    let owner = u64::from_le_bytes(data[0..8].try_into().unwrap()) as usize;
    let seq = u64::from_le_bytes(data[8..16].try_into().unwrap());
    if owner != block {
        return Err(format!(
            "block {block} holds data of block {owner} (seq {seq})"
        ));
    }
    if data != block_data(block, seq).as_slice() {
        return Err(format!(
            "block {block} holds a torn or foreign version (header seq {seq})"
        ));
    }
    Ok(seq)
}

#[derive(Clone, Default)]
struct BlockModel {
    /// Content guaranteed by the last acknowledged flush.
    durable: u64,
    /// Versions sent since that flush (acknowledged or not): any of them may have survived.
    maybe: Vec<u64>,
}

#[test]
fn test_kill_9_never_loses_flushed_writes() {
    let seed = std::env::var("HV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let rounds: usize = std::env::var("HV_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    eprintln!("crash test seed {seed}, {rounds} rounds");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    // 256 KiB extents, a fast tier of 8 of them: the mover is busy swapping.
    let volume = create_volume(dir.path(), VOLUME_SIZE, 2 << 20, 256 << 10);
    let socket = dir.path().join("sock");
    let mut model = vec![BlockModel::default(); BLOCKS];
    let mut next_seq = 1u64;
    let args = [
        "--mover-tick-ms",
        "5",
        "--half-life-secs",
        "0.2",
        "--move-budget-mib",
        "2000",
        "--stats-interval-ms",
        "5",
        "--min-residency-secs",
        "0",
    ];
    let mut moves = 0;
    let mut total_flushes = 0;
    for round in 0..rounds {
        let server = Server::start(&volume, &socket, &args);
        let pid = server.child.id();
        let delay = Duration::from_millis(20 + rng.below(200));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        });
        // On a slow machine the kill may come before the handshake: that round then writes nothing.
        let connected = UnixStream::connect(&socket).map_err(|e| e.to_string());
        let mut client = connected
            .and_then(|stream| NbdClient::connect(stream, "vol").map_err(|e| e.to_string()));
        let hot = rng.below(BLOCKS as u64 - 64) as usize;
        while let Ok(client) = client.as_mut() {
            let choice = rng.below(100);
            let result = if choice < 60 {
                let first = rng.below(BLOCKS as u64 - 8) as usize;
                let count = 1 + rng.below(8) as usize;
                let mut payload = Vec::with_capacity(count * BLOCK);
                for (block, entry) in model.iter_mut().enumerate().skip(first).take(count) {
                    entry.maybe.push(next_seq);
                    payload.extend_from_slice(&block_data(block, next_seq));
                }
                next_seq += 1;
                client.write((first * BLOCK) as u64, &payload)
            } else if choice < 65 {
                let first = rng.below(BLOCKS as u64 - 64) as usize;
                let count = 1 + rng.below(64) as usize;
                for entry in model.iter_mut().skip(first).take(count) {
                    entry.maybe.push(0);
                }
                client.write_zeroes((first * BLOCK) as u64, (count * BLOCK) as u32)
            } else if choice < 75 {
                let result = client.flush();
                if result.is_ok() {
                    total_flushes += 1;
                    for block in model.iter_mut() {
                        if let Some(&last) = block.maybe.last() {
                            block.durable = last;
                            block.maybe.clear();
                        }
                    }
                }
                result
            } else {
                let mut buf = vec![0u8; 64 * BLOCK];
                client.read((hot * BLOCK) as u64, &mut buf)
            };
            if result.is_err() {
                break;
            }
        }
        drop(client);
        killer.join().unwrap();
        drop(server);
        if let Ok(stats) = hv_storage::volume::read_stats(&volume) {
            moves += stats.promotions + stats.demotions;
        }
        // Reopen and verify everything.
        let server = Server::start(&volume, &socket, &args);
        let mut client = NbdClient::connect(UnixStream::connect(&socket).unwrap(), "vol").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for chunk in 0..(VOLUME_SIZE as usize) / buf.len() {
            client.read((chunk * buf.len()) as u64, &mut buf).unwrap();
            for (index, data) in buf.chunks(BLOCK).enumerate() {
                let block = chunk * (buf.len() / BLOCK) + index;
                let found = decode(block, data)
                    .unwrap_or_else(|e| panic!("round {round}, seed {seed}: {e}"));
                let entry = &mut model[block];
                assert!(
                    found == entry.durable || entry.maybe.contains(&found),
                    "round {round}, seed {seed}: block {block} holds version {found}, expected {} or one of {:?}",
                    entry.durable,
                    entry.maybe
                );
                entry.durable = found;
                entry.maybe.clear();
            }
        }
        client.disconnect().unwrap();
        drop(server);
    }
    assert!(
        total_flushes > rounds,
        "the test must actually flush ({total_flushes} flushes)"
    );
    eprintln!("{total_flushes} flushes, at least {moves} extent moves under the writers");
    assert!(
        moves > 0,
        "the mover never moved an extent while writes were running"
    );
}
