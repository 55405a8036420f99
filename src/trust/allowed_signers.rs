//! The OpenSSH allowed-signers format (`ssh-keygen(1)`, section ALLOWED SIGNERS), as git's
//! `gpg.ssh.allowedSignersFile` uses it: one key per line,
//! `principal[,principal...] [options] keytype base64-key [comment]`.
//!
//! Options are those OpenSSH knows: `cert-authority`, `namespaces="git,file"`,
//! `valid-after="YYYYMMDD[HHMM[SS]]Z"`, `valid-before=...`. Anything else is an error naming
//! the line, as in `ssh-keygen -Y verify`: a trust anchor core-ops cannot read exactly is
//! refused, never guessed at.

use ssh_key::PublicKey;
use ssh_key::public::KeyData;

use crate::error::{InputError, Location};

/// One usable line of an allowed-signers file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number in the file.
    pub line: usize,
    /// The principals, as written (`alice@example.org`).
    pub principals: Vec<String>,
    /// The key.
    pub key: KeyData,
    /// `cert-authority`: the key signs certificates; it never verifies a plain signature.
    pub cert_authority: bool,
    /// `namespaces="..."` patterns; `None` means every namespace.
    pub namespaces: Option<Vec<String>>,
    /// `valid-after`, seconds since the epoch (UTC).
    pub valid_after: Option<i64>,
    /// `valid-before`, seconds since the epoch (UTC).
    pub valid_before: Option<i64>,
}

impl Entry {
    /// Whether this entry lets `key` sign in `namespace` at `time` (seconds since the epoch),
    /// as `ssh-keygen -Y verify` decides it for a plain (non-certificate) key.
    pub fn allows(&self, key: &KeyData, namespace: &str, time: i64) -> bool {
        !self.cert_authority
            && &self.key == key
            && self
                .namespaces
                .as_ref()
                .is_none_or(|p| match_pattern_list(namespace, p))
            && self.valid_after.is_none_or(|t| time >= t)
            && self.valid_before.is_none_or(|t| time <= t)
    }
}

/// A parsed allowed-signers file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowedSigners {
    /// Where it was read from (for messages).
    pub file: String,
    /// Its keys, in file order.
    pub entries: Vec<Entry>,
}

impl AllowedSigners {
    /// Parse the text of an allowed-signers file; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<AllowedSigners, InputError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = Location::line(file, i + 1);
            entries.push(parse_line(line, i + 1).map_err(|m| InputError::new(at, m))?);
        }
        Ok(AllowedSigners {
            file: file.to_string(),
            entries,
        })
    }

    /// The entries that let `key` sign in `namespace` at `time`.
    pub fn matching<'a>(
        &'a self,
        key: &'a KeyData,
        namespace: &'a str,
        time: i64,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.allows(key, namespace, time))
    }
}

fn parse_line(line: &str, n: usize) -> Result<Entry, String> {
    let (principals, rest) = split_token(line)?;
    let principals: Vec<String> = principals
        .replace('"', "")
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if principals.is_empty() {
        return Err("no principal before the key".into());
    }
    let rest = rest.trim_start();
    // `[options] keytype base64 [comment]`: a key first, else options then the key
    let (options, key) = match PublicKey::from_openssh(rest) {
        Ok(k) => (None, k),
        Err(_) => {
            let (opts, after) = split_token(rest)?;
            let after = after.trim_start();
            if after.is_empty() {
                return Err(format!("no key after the principals: '{rest}'"));
            }
            let key = PublicKey::from_openssh(after)
                .map_err(|e| format!("not an OpenSSH public key ({e}): '{after}'"))?;
            (Some(opts), key)
        }
    };
    let mut entry = Entry {
        line: n,
        principals,
        key: key.key_data().clone(),
        cert_authority: false,
        namespaces: None,
        valid_after: None,
        valid_before: None,
    };
    for opt in split_options(options.unwrap_or_default())? {
        let (name, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(unquote(v)?)),
            None => (opt.as_str(), None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("cert-authority", None) => entry.cert_authority = true,
            ("namespaces", Some(v)) => {
                entry.namespaces = Some(v.split(',').map(str::to_string).collect());
            }
            ("valid-after", Some(v)) => entry.valid_after = Some(parse_time(&v)?),
            ("valid-before", Some(v)) => entry.valid_before = Some(parse_time(&v)?),
            _ => {
                return Err(format!(
                    "unsupported option '{opt}' (known: cert-authority, namespaces=, \
                     valid-after=, valid-before=)"
                ));
            }
        }
    }
    Ok(entry)
}

/// The first whitespace-separated token (double quotes group, as OpenSSH's `strdelimw`; they
/// are kept), and the rest of the line.
fn split_token(s: &str) -> Result<(String, &str), String> {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => {
                return Ok((s[..i].to_string(), &s[i..]));
            }
            _ => {}
        }
    }
    if quoted {
        return Err(format!("unterminated quote in '{s}'"));
    }
    Ok((s.to_string(), ""))
}

/// Split `a,b="x,y",c` on commas outside quotes (quotes kept for `unquote`).
fn split_options(s: String) -> Result<Vec<String>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    if out.iter().any(String::is_empty) {
        return Err(format!("empty option in '{s}'"));
    }
    Ok(out)
}

fn unquote(v: &str) -> Result<String, String> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if !inner.contains('"') => Ok(inner.to_string()),
        _ => Err(format!("option value must be in double quotes: {v}")),
    }
}

/// `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`, with a trailing `Z` (UTC), to seconds since
/// the epoch. OpenSSH reads a time without `Z` as the host's local time; core-ops refuses it
/// rather than guess the zone.
fn parse_time(v: &str) -> Result<i64, String> {
    let Some(digits) = v.strip_suffix(['Z', 'z']) else {
        return Err(format!(
            "time '{v}' has no trailing Z: core-ops reads validity times as UTC only \
             (write e.g. {v}Z)"
        ));
    };
    let bad = || format!("time '{v}' is not YYYYMMDD[HHMM[SS]]Z");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let num =
        |r: std::ops::Range<usize>| digits.get(r).map_or(0, |s| s.parse::<i64>().unwrap_or(0));
    let (y, m, d) = (num(0..4), num(4..6), num(6..8));
    let (hh, mm, ss) = (num(8..10), num(10..12), num(12..14));
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Howard Hinnant's civil-to-days algorithm (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// OpenSSH's `match_pattern_list`: comma-separated `*`/`?` patterns, `!` negates; a negated
/// match wins over any positive one.
fn match_pattern_list(s: &str, patterns: &[String]) -> bool {
    let mut matched = false;
    for p in patterns {
        match p.strip_prefix('!') {
            Some(neg) if glob(s.as_bytes(), neg.as_bytes()) => return false,
            Some(_) => {}
            None if glob(s.as_bytes(), p.as_bytes()) => matched = true,
            None => {}
        }
    }
    matched
}

fn glob(s: &[u8], p: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(s, &p[1..]) || (!s.is_empty() && glob(&s[1..], p)),
        (Some(b'?'), Some(_)) => glob(&s[1..], &p[1..]),
        (Some(a), Some(b)) if a == b => glob(&s[1..], &p[1..]),
        _ => false,
    }
}

#[cfg(test)]
pub(super) mod time_tests {
    use super::*;

    #[test]
    fn times_and_patterns() {
        assert_eq!(parse_time("19700101Z"), Ok(0));
        assert_eq!(parse_time("20000229000000Z"), Ok(951_782_400));
        assert_eq!(parse_time("202611261346Z"), Ok(1_795_700_760));
        assert!(
            parse_time("20261126")
                .unwrap_err()
                .contains("no trailing Z")
        );
        assert!(parse_time("2026112Z").is_err());
        assert!(parse_time("20261326Z").is_err());
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(match_pattern_list("git", &p(&["git"])));
        assert!(match_pattern_list("git", &p(&["file", "g*"])));
        assert!(!match_pattern_list("git", &p(&["file"])));
        assert!(!match_pattern_list("git", &p(&["*", "!git"])));
        assert!(match_pattern_list("git", &p(&["g?t"])));
    }
}
