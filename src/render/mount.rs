//! Native mount rules: a `.mount`/`.automount` unit is named after its `Where=` by systemd
//! path escaping, and `[X-CoreOps]` holds only `CreateMountpoint=`.
//!
//! Why enforce here: systemd silently ignores a mount unit whose name does not match its
//! `Where=`; catching it at plan time turns a silent no-op into a clear input error.

use crate::error::{InputError, Location};
use crate::model::unit_file::{Effective, UnitFile};

/// The `[X-CoreOps]` section name.
pub const X_COREOPS: &str = "X-CoreOps";

/// `systemd-escape --path`: the unit-name stem systemd derives from a path.
pub fn escape_path(path: &str) -> String {
    let trimmed: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if trimmed.is_empty() {
        return "-".to_string();
    }
    let joined = trimmed.join("/");
    let mut out = String::new();
    for (i, b) in joined.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Validated mount facts CoreOps needs from a `.mount` or `.automount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The effective `Where=`.
    pub where_: String,
    /// `CreateMountpoint=` (default true).
    pub create_mountpoint: bool,
}

/// Check a mount or automount unit: name matches `Where=`, host layers do not move `Where=`,
/// `[X-CoreOps]` holds only `CreateMountpoint=` with a boolean.
///
/// `base` is the effective content of the service's own layers, `effective` includes host
/// drop-ins; `layers` are every layer file (for `file:line` in errors).
pub fn validate(
    unit_name: &str,
    base: &Effective,
    effective: &Effective,
    layers: &[&UnitFile],
) -> Result<MountInfo, InputError> {
    let (stem, section, what) = if let Some(stem) = unit_name.strip_suffix(".mount") {
        (stem, "Mount", "mount")
    } else if let Some(stem) = unit_name.strip_suffix(".automount") {
        (stem, "Automount", "automount")
    } else {
        unreachable!("validate called for {unit_name}");
    };
    let main_file = layers.first().map(|f| f.file.as_str()).unwrap_or(unit_name);
    for layer in layers {
        for section in layer.sections.iter().filter(|s| s.name == X_COREOPS) {
            for e in &section.entries {
                if e.key != "CreateMountpoint" {
                    return Err(InputError::new(
                        Location::line(&layer.file, e.line),
                        format!("unsupported X-CoreOps field '{}'", e.key),
                    ));
                }
                if parse_bool(&e.value).is_none() {
                    return Err(InputError::new(
                        Location::line(&layer.file, e.line),
                        format!("CreateMountpoint must be a boolean, found '{}'", e.value),
                    ));
                }
            }
        }
    }
    let where_line = |file: &UnitFile| {
        file.entries(section)
            .filter(|e| e.key == "Where")
            .last()
            .map(|e| Location::line(&file.file, e.line))
            .unwrap_or_else(|| Location::file(&file.file))
    };
    let Some(base_where) = base.last(section, "Where") else {
        return Err(InputError::new(
            Location::file(main_file),
            format!("{what} unit has no {section} Where="),
        ));
    };
    let Some(eff_where) = effective.last(section, "Where") else {
        return Err(InputError::new(
            Location::file(main_file),
            format!("{what} unit has no {section} Where="),
        ));
    };
    if base_where != eff_where {
        let culprit = layers
            .iter()
            .rev()
            .find(|l| l.entries(section).any(|e| e.key == "Where"))
            .map(|l| where_line(l))
            .unwrap_or_else(|| Location::file(main_file));
        return Err(InputError::new(
            culprit,
            format!(
                "host override changes {section} Where= of {unit_name} from '{base_where}' to '{eff_where}'; mount units are keyed by Where="
            ),
        ));
    }
    if escape_path(eff_where) != stem || !eff_where.starts_with('/') {
        let loc = layers
            .first()
            .map(|l| where_line(l))
            .unwrap_or_else(|| Location::file(main_file));
        return Err(InputError::new(
            loc,
            format!(
                "{what} unit name does not match {} Where (Where={eff_where} expects {}.{what})",
                if what == "mount" {
                    "Mount"
                } else {
                    "Automount"
                },
                escape_path(eff_where)
            ),
        ));
    }
    let create_mountpoint = effective
        .last(X_COREOPS, "CreateMountpoint")
        .and_then(parse_bool)
        .unwrap_or(true);
    Ok(MountInfo {
        where_: eff_where.to_string(),
        create_mountpoint,
    })
}

/// systemd's boolean spellings.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd_escape_path() {
        assert_eq!(escape_path("/srv/media"), "srv-media");
        assert_eq!(
            escape_path("/var/lib/immich/media/"),
            "var-lib-immich-media"
        );
        assert_eq!(escape_path("/srv/my-data"), "srv-my\\x2ddata");
        assert_eq!(escape_path("/"), "-");
        assert_eq!(escape_path("/srv/.hidden"), "srv-.hidden");
        assert_eq!(escape_path("/.x"), "\\x2ex");
    }

    fn check(name: &str, base: &str, host: Option<&str>) -> Result<MountInfo, InputError> {
        let b = UnitFile::parse(&format!("services/m/{name}"), base).unwrap();
        let mut layers = vec![b.clone()];
        if let Some(h) = host {
            layers.push(UnitFile::parse("hosts/h/overrides/m/x.d/50.conf", h).unwrap());
        }
        let refs: Vec<&UnitFile> = layers.iter().collect();
        let base_eff = Effective::merge([&b]);
        let eff = Effective::merge(refs.iter().copied());
        validate(name, &base_eff, &eff, &refs)
    }

    #[test]
    fn mount_name_must_match_where() {
        let e = check(
            "srv-data.mount",
            "[Mount]\nWhat=tmpfs\nWhere=/srv/other\n",
            None,
        )
        .unwrap_err();
        assert!(
            e.message
                .starts_with("mount unit name does not match Mount Where"),
            "{e}"
        );
        assert_eq!(e.location.line, Some(3));
    }

    #[test]
    fn automount_name_must_match_where() {
        let e = check("srv-data.automount", "[Automount]\nWhere=/srv/x\n", None).unwrap_err();
        assert!(
            e.message
                .starts_with("automount unit name does not match Automount Where"),
            "{e}"
        );
    }

    #[test]
    fn x_coreops_accepts_only_create_mountpoint() {
        let e = check(
            "srv-data.mount",
            "[Mount]\nWhat=tmpfs\nWhere=/srv/data\n[X-CoreOps]\nAutomount=true\n",
            None,
        )
        .unwrap_err();
        assert!(e.message.starts_with("unsupported X-CoreOps field"), "{e}");
        assert_eq!(e.location.line, Some(5));
        let ok = check(
            "srv-data.mount",
            "[Mount]\nWhat=tmpfs\nWhere=/srv/data\n[X-CoreOps]\nCreateMountpoint=false\n",
            None,
        )
        .unwrap();
        assert!(!ok.create_mountpoint);
    }

    #[test]
    fn host_override_may_not_move_where() {
        let e = check(
            "srv-data.mount",
            "[Mount]\nWhat=tmpfs\nWhere=/srv/data\n",
            Some("[Mount]\nWhere=/srv/elsewhere\n"),
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("host override changes Mount Where="),
            "{e}"
        );
        assert_eq!(e.location.file, "hosts/h/overrides/m/x.d/50.conf");
        // other fields may change
        let ok = check(
            "srv-data.mount",
            "[Mount]\nWhat=tmpfs\nWhere=/srv/data\n",
            Some("[Mount]\nOptions=size=1m\n"),
        );
        assert!(ok.is_ok());
    }
}
