//! The YAML documents on arbitrary bytes: host.yaml, service.yaml and a runtime manifest
//! (`runtimes/<name>/<version>.yaml`, named after its own name/version fields so validation
//! gets past the path check). Errors are fine; a panic is a finding.
#![no_main]

use core_ops::error::InputError;
use core_ops::model::yaml::{self, HostYaml, ServiceYaml};
use core_ops::runtime::manifest;
use core_ops::source::{RepoEntry, RepoFiles};
use libfuzzer_sys::fuzz_target;

/// Every path exists (its content comes from `read`), so artifact checks go deeper.
struct AnyFiles;

impl RepoFiles for AnyFiles {
    fn entry(&self, _path: &str) -> Result<Option<RepoEntry>, InputError> {
        Ok(None)
    }
    fn exists(&self, path: &str) -> Result<bool, InputError> {
        Ok(!path.contains("missing"))
    }
    fn paths_under(&self, dir: &str) -> Result<Vec<String>, InputError> {
        Ok(vec![format!("{dir}/a"), format!("{dir}/b")])
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = yaml::parse::<HostYaml>("hosts/h/host.yaml", data);
    let _ = yaml::parse::<ServiceYaml>("services/web/service.yaml", data);

    let mut file = "runtimes/x/1.0.0.yaml".to_string();
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(serde_yaml::Value::Mapping(m)) = serde_yaml::from_str::<serde_yaml::Value>(text) {
            let field = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
            if let (Some(n), Some(v)) = (field("name"), field("version")) {
                file = format!("runtimes/{n}/{v}.yaml");
            }
        }
    }
    let read = |path: &str| -> Result<Vec<u8>, InputError> {
        Ok(format!("content of {path}\n").into_bytes())
    };
    let _ = manifest::parse(&file, data, &AnyFiles, &read);
});
