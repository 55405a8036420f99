//! The control channel: a shell in the guest behind a virtio-serial port.
//!
//! Why virtio-serial: it needs no network in the guest and works the same under qemu and
//! libvirt (`docs/vm-testbed.md`). The port is one byte stream shared by every
//! command, so each command is a script file on the 9p share, run in a subshell whose output
//! goes to files on the share, followed by a random tag line carrying its exit status.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A connected control channel.
pub struct Control {
    stream: UnixStream,
    counter: u64,
    pending: Vec<u8>,
}

impl Control {
    /// Connect to the host end of the port and drain output left by an earlier client.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Control> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("control socket {}: {e}; retrying", socket.display());
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("connecting to {}", socket.display()));
                }
            }
        };
        let mut c = Control {
            stream,
            counter: 0,
            pending: Vec::new(),
        };
        c.drain(Duration::from_millis(200))?;
        Ok(c)
    }

    fn drain(&mut self, quiet: Duration) -> Result<()> {
        self.stream.set_read_timeout(Some(quiet))?;
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => bail!("control channel closed by the guest"),
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Run `script` (a path the guest can read) with bash; stdout and stderr go to the given
    /// guest paths. Returns the exit status, or an error after `timeout`.
    pub fn run_script(
        &mut self,
        script: &str,
        stdout: &str,
        stderr: &str,
        timeout: Duration,
    ) -> Result<i32> {
        self.counter += 1;
        let tag = format!(
            "CORE-OPS-VERIFY-DONE-{}-{}",
            std::process::id(),
            self.counter
        );
        let line = format!(
            "( bash {script} ) </dev/null >{stdout} 2>{stderr}; printf '\\n%s %d\\n' {tag} $?\n"
        );
        self.stream.write_all(line.as_bytes())?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        self.stream
            .set_read_timeout(Some(Duration::from_millis(250)))?;
        loop {
            if let Some(rc) = find_tag(&self.pending, &tag) {
                self.pending.clear();
                return Ok(rc);
            }
            if Instant::now() > deadline {
                bail!("no answer from the guest within {} s", timeout.as_secs());
            }
            match self.stream.read(&mut buf) {
                Ok(0) => bail!("control channel closed by the guest"),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The exit status on the tag line, once the whole line has arrived.
fn find_tag(buf: &[u8], tag: &str) -> Option<i32> {
    let text = String::from_utf8_lossy(buf);
    let at = text.find(&format!("{tag} "))?;
    let rest = &text[at + tag.len() + 1..];
    let end = rest.find('\n')?;
    rest[..end].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_line_is_found_only_when_complete() {
        assert_eq!(find_tag(b"noise\nTAG-1 0\n", "TAG-1"), Some(0));
        assert_eq!(find_tag(b"noise\nTAG-1 12", "TAG-1"), None);
        assert_eq!(find_tag(b"\nTAG-1 127\n", "TAG-1"), Some(127));
        assert_eq!(find_tag(b"\nTAG-11 3\n", "TAG-1"), None);
    }
}
