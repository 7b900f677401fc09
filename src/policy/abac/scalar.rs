//! Scalars and scalar lists in `abac.yaml`, parsed inside serde's visitor so
//! that an invalid value (a CIDR, a time window, a glob) is reported at its
//! own line and column.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

use crate::policy::glob::Glob;

/// A value parsed from one YAML scalar's text.
pub(crate) trait Parse: Sized {
    fn parse(s: &str) -> Result<Self, String>;
}

impl Parse for String {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
}

impl Parse for Glob {
    fn parse(s: &str) -> Result<Self, String> {
        Glob::new(s).map_err(|e| e.to_string())
    }
}

/// One scalar (string, number or boolean, read as text) parsed into `T`.
pub(crate) struct Checked<T>(pub(crate) T);

struct CheckedVisitor<T>(PhantomData<T>);

impl<T: Parse> CheckedVisitor<T> {
    fn done<E: de::Error>(s: &str) -> Result<T, E> {
        T::parse(s).map_err(E::custom)
    }
}

/// The scalar arms shared by single values and lists.
macro_rules! scalar_visits {
    ($out:ty, $wrap:expr) => {
        fn visit_str<E: de::Error>(self, v: &str) -> Result<$out, E> {
            CheckedVisitor::<T>::done(v).map($wrap)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<$out, E> {
            CheckedVisitor::<T>::done(&v.to_string()).map($wrap)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<$out, E> {
            CheckedVisitor::<T>::done(&v.to_string()).map($wrap)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<$out, E> {
            CheckedVisitor::<T>::done(&v.to_string()).map($wrap)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<$out, E> {
            CheckedVisitor::<T>::done(&v.to_string()).map($wrap)
        }
    };
}

impl<T: Parse> Visitor<'_> for CheckedVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    scalar_visits!(T, |x| x);
}

impl<'de, T: Parse> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor(PhantomData)).map(Checked)
    }
}

/// One scalar or a non-empty list of them, each parsed into `T`.
pub(crate) struct List<T>(pub(crate) Vec<T>);

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: Parse> Visitor<'de> for ListVisitor<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a non-empty list of strings")
    }
    scalar_visits!(Vec<T>, |x| vec![x]);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<Checked<T>>()? {
            out.push(item.0);
        }
        if out.is_empty() {
            return Err(de::Error::custom(
                "empty list; it would never match (remove the key instead)",
            ));
        }
        Ok(out)
    }
}

impl<'de, T: Parse> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor(PhantomData)).map(List)
    }
}
