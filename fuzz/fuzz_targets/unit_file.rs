//! The unit-file parser on arbitrary input: a base file and drop-ins (split at NUL bytes),
//! each parsed, then merged and rendered canonically. Errors are fine; a panic is a finding.
#![no_main]

use core_ops::model::unit_file::{Effective, UnitFile};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 4] = [
    "services/web/web.service",
    "services/web/web.service.d/10-x.conf",
    "services/data/srv-data.mount",
    "services/web/web.socket",
];

fuzz_target!(|data: &[u8]| {
    let mut layers = Vec::new();
    for (i, chunk) in data.split(|b| *b == 0).enumerate().take(8) {
        // non-UTF-8 input is the caller's error; the lossy text still exercises the parser
        let text = match std::str::from_utf8(chunk) {
            Ok(t) => t.to_string(),
            Err(_) => String::from_utf8_lossy(chunk).into_owned(),
        };
        if let Ok(u) = UnitFile::parse(NAMES[i % NAMES.len()], &text) {
            layers.push(u);
        }
    }
    let eff = Effective::merge(&layers);
    let text = eff.canonical_text();
    // the canonical text is core-ops' own output: parsing it again must not panic either
    let _ = UnitFile::parse("canonical", &text);
});
