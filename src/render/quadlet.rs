//! Quadlet identity: which systemd unit the Quadlet generator makes of a Quadlet file.
//!
//! Why: core-ops writes `web.container` but starts, verifies and orders `web.service`; the plan
//! must name both so nobody has to know podman's naming rules by heart.

use crate::model::unit_file::UnitFile;

/// Quadlet file suffixes (without the dot).
pub const QUADLET_SUFFIXES: &[&str] = &[
    "container",
    "volume",
    "network",
    "pod",
    "kube",
    "image",
    "build",
];

/// Whether a file name is a Quadlet file.
pub fn is_quadlet(name: &str) -> bool {
    suffix(name).is_some_and(|s| QUADLET_SUFFIXES.contains(&s))
}

fn suffix(name: &str) -> Option<&str> {
    name.rsplit_once('.').map(|(_, s)| s)
}

/// The generated unit name, following podman's rules: `web.container` -> `web.service`,
/// `data.volume` -> `data-volume.service`, `net.network` -> `net-network.service`,
/// `p.pod` -> `p-pod.service`, `k.kube` -> `k.service`, `i.image` -> `i-image.service`,
/// `b.build` -> `b-build.service`; `ServiceName=` in the main section wins.
pub fn generated_unit(name: &str, file: &UnitFile) -> String {
    let (stem, kind) = name.rsplit_once('.').unwrap_or((name, ""));
    let section = match kind {
        "container" => "Container",
        "volume" => "Volume",
        "network" => "Network",
        "pod" => "Pod",
        "kube" => "Kube",
        "image" => "Image",
        "build" => "Build",
        _ => "",
    };
    if let Some(e) = file
        .entries(section)
        .filter(|e| e.key == "ServiceName")
        .last()
    {
        let v = e.value.trim();
        return if v.ends_with(".service") {
            v.to_string()
        } else {
            format!("{v}.service")
        };
    }
    match kind {
        "container" | "kube" => format!("{stem}.service"),
        other => format!("{stem}-{other}.service"),
    }
}

/// The other Quadlet files a Quadlet file names, from its canonical (effective) text:
/// `Network=db.network`, `Pod=app.pod`, `Volume=data.volume:/srv`, `Image=base.image` or
/// `.build`, `Mount=type=volume,source=data.volume,...`. Sorted, without duplicates.
///
/// Why: the generator turns each into `Requires=`/`After=` on the named file's unit, so the
/// plan orders them first and restarts the users of a changed one.
pub fn linked_files(effective: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in effective.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let candidates: Vec<&str> = match key {
            // NAME[:options]
            "Network" | "Volume" | "Pod" | "Image" => vec![value.split(':').next().unwrap_or("")],
            "Mount" => value
                .split(',')
                .filter_map(|kv| {
                    kv.strip_prefix("source=")
                        .or_else(|| kv.strip_prefix("src="))
                })
                .collect(),
            _ => Vec::new(),
        };
        out.extend(
            candidates
                .into_iter()
                .map(str::trim)
                .filter(|n| is_quadlet(n) && !n.contains('/'))
                .map(str::to_string),
        );
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_follow_podman() {
        let empty = UnitFile::default();
        assert_eq!(generated_unit("web.container", &empty), "web.service");
        assert_eq!(generated_unit("data.volume", &empty), "data-volume.service");
        assert_eq!(generated_unit("k.kube", &empty), "k.service");
        assert_eq!(generated_unit("p.pod", &empty), "p-pod.service");
        let f = UnitFile::parse("x", "[Container]\nServiceName=custom\n").unwrap();
        assert_eq!(generated_unit("web.container", &f), "custom.service");
        assert!(is_quadlet("web.container"));
        assert!(!is_quadlet("web.service"));
    }

    #[test]
    fn links_to_other_quadlet_files_are_found() {
        let text = "[Container]\nImage=base.build\nMount=type=volume,source=cache.volume,destination=/c\nNetwork=host\nNetwork=db.network:ip=10.0.0.2\nPod=app.pod\nVolume=/srv:/srv\nVolume=data.volume:/data:Z\n";
        assert_eq!(
            linked_files(text),
            vec![
                "app.pod",
                "base.build",
                "cache.volume",
                "data.volume",
                "db.network"
            ]
        );
        assert!(linked_files("[Container]\nImage=docker.io/library/nginx:1\n").is_empty());
    }
}
