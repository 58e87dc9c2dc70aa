//! Immutable batch files, what the archives (`history.rs`, `audit_history.rs`) are made
//! of: a magic line naming the format, then records of length-prefixed fields. A file is
//! written to `<name>.partial`, synced, renamed, and its folder synced: it is whole or
//! absent, and a `.partial` left by a crash is removed before anything reads the folder.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::store::StoreError;

/// One record: its fields, in order.
pub(super) type Fields = Vec<Vec<u8>>;

pub(super) fn io(what: &str, path: &Path) -> impl Fn(std::io::Error) -> StoreError {
    let place = format!("{what} {}", path.display());
    move |e| StoreError::Storage(format!("store archive: {place}: {e}"))
}

pub(super) fn corrupt(path: &Path, reason: &str) -> StoreError {
    StoreError::Corrupt {
        table: "archive",
        reason: format!("{}: {reason}", path.display()),
    }
}

/// Names in `dir` (sorted) that `keep` accepts; none if `dir` does not exist.
pub(super) fn sorted_names(
    dir: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry.map_err(io("listing", dir))?.file_name();
        if let Some(name) = name.to_str().filter(|n| keep(n)) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `name` is a finished batch's.
pub(super) fn is_batch(name: &str) -> bool {
    name.ends_with(".batch")
}

/// Removes the batches in `dir` a crash interrupted before their rename.
pub(super) fn remove_partials(dir: &Path) -> Result<(), StoreError> {
    for partial in sorted_names(dir, |n| n.ends_with(".partial"))? {
        let path = dir.join(partial);
        fs::remove_file(&path).map_err(io("removing", &path))?;
    }
    Ok(())
}

/// Writes `records` to `dir`/`name` (replacing any file of that name) durably and
/// atomically; `parent` is synced too when `dir` may be new.
pub(super) fn write(
    dir: &Path,
    parent: Option<&Path>,
    name: &str,
    magic: &[u8],
    records: impl Iterator<Item = Fields>,
) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mut bytes = magic.to_vec();
    for fields in records {
        for field in fields {
            let len = u32::try_from(field.len()).expect("an archived field is far below 4 GiB");
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&field);
        }
    }
    let temporary = dir.join(format!("{name}.partial"));
    let mut file = fs::File::create(&temporary).map_err(io("creating", &temporary))?;
    file.write_all(&bytes).map_err(io("writing", &temporary))?;
    file.sync_all().map_err(io("syncing", &temporary))?;
    fs::rename(&temporary, dir.join(name)).map_err(io("renaming", &temporary))?;
    // The rename (and a new folder) last only once their folders are synced.
    for folder in std::iter::once(dir).chain(parent) {
        fs::File::open(folder)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", folder))?;
    }
    Ok(())
}

/// Reads the records of `path`, `fields` fields each.
pub(super) fn read(path: &Path, magic: &[u8], fields: usize) -> Result<Vec<Fields>, StoreError> {
    let bytes = fs::read(path).map_err(io("reading", path))?;
    parse(path, &bytes, magic, fields)
}

/// [`read`], or `None` if the file is gone: what a reader meets when retention removed a
/// batch after the reader listed its folder.
pub(super) fn read_unless_removed(
    path: &Path,
    magic: &[u8],
    fields: usize,
) -> Result<Option<Vec<Fields>>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => parse(path, &bytes, magic, fields).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", path)(e)),
    }
}

fn parse(
    path: &Path,
    bytes: &[u8],
    magic: &[u8],
    fields: usize,
) -> Result<Vec<Fields>, StoreError> {
    let mut rest = bytes
        .strip_prefix(magic)
        .ok_or_else(|| corrupt(path, "not a batch of this archive"))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let mut record = Vec::with_capacity(fields);
        for _ in 0..fields {
            let field = take(&mut rest).ok_or_else(|| corrupt(path, "truncated record"))?;
            record.push(field.to_vec());
        }
        out.push(record);
    }
    Ok(out)
}

/// Takes one length-prefixed field off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let value = rest.get(4..4 + len)?;
    *rest = &rest[4 + len..];
    Some(value)
}
