//! CRIU's custom field options (`opts.proto`, extension 1018 of
//! `google.protobuf.FieldOptions`), read from a field's descriptor.

use std::cell::RefCell;
use std::collections::HashMap;

use prost_reflect::{FieldDescriptor, Value};

use crate::descriptors::pool;

/// The `(criu)` options of one field.
#[derive(Debug, Clone, Default)]
pub(crate) struct CriuOpts {
    pub hex: bool,
    pub ipadd: bool,
    pub flags: Option<String>,
    pub dev: bool,
    pub odev: bool,
    pub dict: Option<String>,
    pub conv: Option<String>,
}

thread_local! {
    static CACHE: RefCell<HashMap<String, CriuOpts>> = RefCell::new(HashMap::new());
}

/// The options of `field` (cached: descriptors never change).
pub(crate) fn of(field: &FieldDescriptor) -> CriuOpts {
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
