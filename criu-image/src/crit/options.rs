//! CRIU's custom field options (`opts.proto`, extension 1018 of
//! `google.protobuf.FieldOptions`), read from a field's descriptor.

use std::cell::RefCell;
use std::collections::HashMap;

use prost_reflect::{FieldDescriptor, Value};

use crate::descriptors::pool;

/// The `(criu)` options of one field ([`super::field_options`]): what
/// crit's pretty style applies to its value, and what `crit encode` must
/// undo.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CriuOpts {
    /// `(criu).hex`: a number shown in hexadecimal.
    pub hex: bool,
    /// `(criu).ipadd`: a repeated u32 that is an IPv4 or IPv6 address.
    pub ipadd: bool,
    /// `(criu).flags`: the name of a flag table ([`super::flag_table`]).
    pub flags: Option<String>,
    /// `(criu).dev`: a `major:minor` device.
    pub dev: bool,
    /// `(criu).odev`: a device in the old (glibc `makedev`) encoding.
    pub odev: bool,
    /// `(criu).dict`: the name of a dictionary ([`super::dict_value`]).
    pub dict: Option<String>,
    /// `(criu).conv`: a custom conversion (`unix_name`).
    pub conv: Option<String>,
}

thread_local! {
    static CACHE: RefCell<HashMap<String, CriuOpts>> = RefCell::new(HashMap::new());
}

/// The options of `field` (cached: descriptors never change).
pub fn of(field: &FieldDescriptor) -> CriuOpts {
    CACHE.with(|cache| {
        cache
            .borrow_mut()
            .entry(field.full_name().to_string())
            .or_insert_with(|| read(field))
            .clone()
    })
}

fn read(field: &FieldDescriptor) -> CriuOpts {
    let Some(extension) = pool().get_extension_by_name("criu") else {
        return CriuOpts::default();
    };
    let options = field.options();
    if !options.has_extension(&extension) {
        return CriuOpts::default();
    }
    let value = options.get_extension(&extension);
    let Value::Message(m) = value.as_ref() else {
        return CriuOpts::default();
    };
    let flag = |name: &str| {
        matches!(
            m.get_field_by_name(name).as_deref(),
            Some(Value::Bool(true))
        )
    };
    let text = |name: &str| match m.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    CriuOpts {
        hex: flag("hex"),
        ipadd: flag("ipadd"),
        flags: text("flags"),
        dev: flag("dev"),
        odev: flag("odev"),
        dict: text("dict"),
        conv: text("conv"),
    }
}
