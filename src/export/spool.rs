//! A disk queue for export requests the backend could not take: encoded requests are written
//! as files (write to a temporary name, then rename, so a crash never leaves half a file) and
//! replayed oldest first when the backend is back, also after a restart.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why a request could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// `spool_max_bytes` would be exceeded.
    #[error("spool is full ({used} of {max} bytes)")]
    Full {
        /// Bytes in the spool.
        used: u64,
        /// The limit.
        max: u64,
    },
    /// The file system refused.
    #[error("spool I/O error in {dir}: {source}")]
    Io {
        /// The spool directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One spooled request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spooled {
    /// Its file.
    pub path: PathBuf,
    /// Spans it holds.
    pub spans: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

struct State {
    next_seq: u64,
    bytes: u64,
    files: std::collections::VecDeque<Spooled>,
}

/// The spool directory and its accounting.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

const SUFFIX: &str = ".otlp";

/// File name: zero-padded sequence number (sorts in write order) and span count.
fn file_name(seq: u64, spans: u64) -> String {
    format!("{seq:020}-{spans}{SUFFIX}")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (seq, spans) = stem.split_once('-')?;
    Some((seq.parse().ok()?, spans.parse().ok()?))
}

impl Spool {
    /// Opens (creating) the directory and takes over what an earlier run left in it.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".tmp") {
                // A write interrupted by a crash: never renamed, so never counted.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            if let Some((seq, spans)) = parse_name(&name) {
                let bytes = entry.metadata().map_err(io)?.len();
                found.push((
                    seq,
                    Spooled {
                        path: entry.path(),
                        spans,
                        bytes,
                    },
                ));
            }
        }
        found.sort_by_key(|(seq, _)| *seq);
        let next_seq = found.last().map_or(0, |(seq, _)| seq + 1);
        let bytes = found.iter().map(|(_, s)| s.bytes).sum();
        if !found.is_empty() {
            tracing::info!(
                files = found.len(),
                bytes,
                "spool holds requests from an earlier run; replaying"
            );
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(State {
                next_seq,
                bytes,
                files: found.into_iter().map(|(_, s)| s).collect(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one encoded request holding `spans` spans.
    pub fn push(&self, body: &[u8], spans: u64) -> Result<(), SpoolError> {
        let seq = {
            let mut state = self.state();
            if state.bytes + body.len() as u64 > self.max_bytes {
                return Err(SpoolError::Full {
                    used: state.bytes,
                    max: self.max_bytes,
                });
            }
            state.bytes += body.len() as u64;
            state.next_seq += 1;
            state.next_seq - 1
        };
        let path = self.dir.join(file_name(seq, spans));
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(body)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)
        })();
        let mut state = self.state();
        match written {
            Ok(()) => {
                let item = Spooled {
                    path,
                    spans,
                    bytes: body.len() as u64,
                };
                // Keep sequence order even when writers finish out of order.
                let at = state
                    .files
                    .iter()
                    .position(|f| f.path > item.path)
                    .unwrap_or(state.files.len());
                state.files.insert(at, item);
                Ok(())
            }
            Err(source) => {
                state.bytes -= body.len() as u64;
                let _ = fs::remove_file(&tmp);
                Err(SpoolError::Io {
                    dir: self.dir.clone(),
                    source,
                })
            }
        }
    }

    /// The oldest spooled request, without removing it.
    pub fn oldest(&self) -> Option<Spooled> {
        self.state().files.front().cloned()
    }

    /// Reads a spooled request's bytes.
    pub fn read(&self, item: &Spooled) -> Result<Vec<u8>, SpoolError> {
        fs::read(&item.path).map_err(|source| SpoolError::Io {
            dir: self.dir.clone(),
            source,
        })
    }

    /// Forgets a request once it was delivered (or refused for good).
    pub fn remove(&self, item: &Spooled) {
        let mut state = self.state();
        if let Some(i) = state.files.iter().position(|f| f.path == item.path) {
            state.files.remove(i);
            state.bytes -= item.bytes;
        }
        let _ = fs::remove_file(&item.path);
    }

    /// Spans waiting in the spool.
    pub fn spans(&self) -> u64 {
        self.state().files.iter().map(|f| f.spans).sum()
    }

    /// Bytes waiting in the spool.
    pub fn bytes(&self) -> u64 {
        self.state().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spooled_requests_come_back_in_order_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            spool.push(b"first", 1).unwrap();
            spool.push(b"second", 2).unwrap();
            std::fs::write(dir.path().join("00000000000000000009.tmp"), b"torn").unwrap();
        }
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.spans(), 3);
        let first = spool.oldest().unwrap();
        assert_eq!(spool.read(&first).unwrap(), b"first");
        spool.remove(&first);
        let second = spool.oldest().unwrap();
        assert_eq!(spool.read(&second).unwrap(), b"second");
        assert_eq!(second.spans, 2);
        spool.push(b"third", 1).unwrap();
        spool.remove(&second);
        assert_eq!(spool.read(&spool.oldest().unwrap()).unwrap(), b"third");
        assert!(!dir.path().join("00000000000000000009.tmp").exists());
    }

    #[test]
    fn a_full_spool_refuses_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 8).unwrap();
        spool.push(b"12345", 1).unwrap();
        assert!(matches!(
            spool.push(b"12345", 1),
            Err(SpoolError::Full { .. })
        ));
        assert_eq!(spool.bytes(), 5);
    }
}
