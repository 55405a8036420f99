//! The name serde gives a unit enum variant, as a `&'static str`, without a hand-kept table.
//!
//! Why: a `match` repeating every `#[serde(rename_all = "snake_case")]` name drifts from the
//! JSON the moment a variant is added or renamed; asking serde for the name cannot. The
//! serializer below accepts exactly one thing, a unit variant, and hands back the name serde
//! passed to it (static, because derive emits it as a literal).

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};

/// What [`serde_name`] got when the value was not a unit enum variant.
#[derive(Debug)]
pub struct NotUnitVariant(String);

impl fmt::Display for NotUnitVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a unit enum variant: {}", self.0)
    }
}

impl std::error::Error for NotUnitVariant {}

impl ser::Error for NotUnitVariant {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NotUnitVariant(msg.to_string())
    }
}

/// The serde name of a unit enum variant (`Action::NoOp` -> `"no_op"`); `""` for anything
/// else (a newtype or struct variant, a struct, a number).
///
/// Why: `as_str()` of a JSON-named enum is this, so the text output and the JSON always use
/// the same word.
pub fn serde_name<T: Serialize + ?Sized>(value: &T) -> &'static str {
    value.serialize(UnitVariantName).unwrap_or("")
}

struct UnitVariantName;

/// Every `serialize_*` but the unit variant refuses, naming what it got.
macro_rules! refuse {
    ($($method:ident($($ty:ty),*) -> $ok:ty;)*) => {$(
        fn $method(self, $(_: $ty),*) -> Result<$ok, NotUnitVariant> {
            Err(NotUnitVariant(stringify!($method).to_string()))
        }
    )*};
}

impl ser::Serializer for UnitVariantName {
    type Ok = &'static str;
    type Error = NotUnitVariant;
    type SerializeSeq = Impossible<&'static str, NotUnitVariant>;
    type SerializeTuple = Impossible<&'static str, NotUnitVariant>;
    type SerializeTupleStruct = Impossible<&'static str, NotUnitVariant>;
    type SerializeTupleVariant = Impossible<&'static str, NotUnitVariant>;
    type SerializeMap = Impossible<&'static str, NotUnitVariant>;
    type SerializeStruct = Impossible<&'static str, NotUnitVariant>;
    type SerializeStructVariant = Impossible<&'static str, NotUnitVariant>;

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<&'static str, NotUnitVariant> {
        Ok(variant)
    }

    refuse! {
        serialize_bool(bool) -> &'static str;
        serialize_i8(i8) -> &'static str;
        serialize_i16(i16) -> &'static str;
        serialize_i32(i32) -> &'static str;
        serialize_i64(i64) -> &'static str;
        serialize_u8(u8) -> &'static str;
        serialize_u16(u16) -> &'static str;
        serialize_u32(u32) -> &'static str;
        serialize_u64(u64) -> &'static str;
        serialize_f32(f32) -> &'static str;
        serialize_f64(f64) -> &'static str;
        serialize_char(char) -> &'static str;
        serialize_str(&str) -> &'static str;
        serialize_bytes(&[u8]) -> &'static str;
        serialize_none() -> &'static str;
        serialize_unit() -> &'static str;
        serialize_unit_struct(&'static str) -> &'static str;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize)
            -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize)
            -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<&'static str, NotUnitVariant> {
        Err(NotUnitVariant("serialize_some".into()))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<&'static str, NotUnitVariant> {
        Err(NotUnitVariant("serialize_newtype_struct".into()))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<&'static str, NotUnitVariant> {
        Err(NotUnitVariant("serialize_newtype_variant".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Sample {
        NoOp,
        #[serde(rename = "other-name")]
        Renamed,
        Carrying(u8),
    }

    #[test]
    fn unit_variants_get_serdes_name_and_nothing_else_gets_one() {
        assert_eq!(serde_name(&Sample::NoOp), "no_op");
        assert_eq!(serde_name(&Sample::Renamed), "other-name");
        assert_eq!(serde_name(&Sample::Carrying(1)), "");
        assert_eq!(serde_name("text"), "");
        assert_eq!(serde_name(&3u8), "");
    }

    #[test]
    fn the_json_enums_names_match_their_json() {
        use crate::model::normalize::Kind;
        use crate::plan::Action;
        use crate::record::runtime_receipt::InstallState;
        use crate::verify::Outcome;
        fn json<T: Serialize>(v: T) -> String {
            serde_json::to_value(v)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }
        for a in [Action::NoOp, Action::Blocked, Action::Create] {
            assert_eq!(a.as_str(), json(a));
        }
        assert_eq!(Action::NoOp.as_str(), "no_op");
        for k in [Kind::Unit, Kind::Dropin, Kind::Automount, Kind::Runtime] {
            assert_eq!(k.as_str(), json(k));
        }
        for s in [InstallState::ManifestResolved, InstallState::RolledBack] {
            assert_eq!(s.as_str(), json(s));
        }
        assert_eq!(InstallState::ManifestResolved.as_str(), "manifest_resolved");
        for o in [Outcome::ConvergedWithToleratedVariance, Outcome::Failed] {
            assert_eq!(o.as_str(), json(o));
        }
    }
}
