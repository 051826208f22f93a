//! crit's commands: `decode`, `encode`, `show`, `info`, `x`.

use criu_image::Image;

use crate::args::{DecodeArgs, EncodeArgs, ExploreArgs, InfoArgs, ShowArgs};
use crate::crit::{self as c, encode::encode as encode_doc, explore::explore as explore_dir};
use crate::error::{CliError, CliResult};
use crate::output::{read_input, write_output};

fn image(data: &[u8], name: &str) -> CliResult<Image> {
    Image::decode(data).map_err(|e| {
        CliError::bad_input(format!("{name}: {e}"))
            .hint("is it a CRIU image? pages-*.img holds raw memory, not entries")
    })
}

fn name_of(path: Option<&std::path::Path>) -> String {
    path.map_or_else(|| "stdin".into(), |p| p.display().to_string())
}

/// `decode`: an image as crit's JSON.
pub fn decode(a: &DecodeArgs) -> CliResult {
    let data = read_input(a.input.as_deref())?;
    let image = image(&data, &name_of(a.input.as_deref()))?;
    write_output(a.out.as_deref(), c::decode(&image, a.pretty).as_bytes())
}

/// `encode`: crit's JSON back into an image.
pub fn encode(a: &EncodeArgs) -> CliResult {
    let data = read_input(a.input.as_deref())?;
    let name = name_of(a.input.as_deref());
    let doc: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
        CliError::bad_input(format!("{name} is not JSON: {e}"))
            .hint("encode reads what decode writes; to decode an image, use decode")
    })?;
    let bytes = encode_doc(&doc).map_err(|e| CliError::bad_input(format!("{name}: {e}")))?;
    write_output(a.out.as_deref(), &bytes)
}

/// `show`: the pretty style, indented.
pub fn show(a: &ShowArgs) -> CliResult {
    let data = read_input(Some(&a.input))?;
    let image = image(&data, &a.input.display().to_string())?;
    write_output(None, c::show(&image, a.nopl).as_bytes())
}

/// `info`: magic and entry count.
pub fn info(a: &InfoArgs) -> CliResult {
    let data = read_input(Some(&a.input))?;
    let image = image(&data, &a.input.display().to_string())?;
    write_output(None, c::info(&image).as_bytes())
}

/// `x`: explore a checkpoint.
pub fn explore(a: &ExploreArgs) -> CliResult {
    let text = explore_dir(&a.dir, a.what)?;
    write_output(None, text.as_bytes())
}
