//! Reading and writing the JSON formats: schema check first, then a typed parse
//! whose errors carry file, line, column and field; writes are atomic.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{PlansError, Result};

/// The largest JSON file kvpr reads (profiles, plans, model configs).
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Reads a whole regular file of at most `limit` bytes. Anything else (a
/// directory, a device such as `/dev/zero`, a FIFO, a larger file) is refused
/// before it is read, and the read stops at the limit even if the file grows.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let io = |source| PlansError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = open_input(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(PlansError::Input {
            path: path.to_path_buf(),
            reason: "is not a regular file; give the path of a file".into(),
        });
    }
    let too_big = || PlansError::Input {
        path: path.to_path_buf(),
        reason: format!(
            "is larger than {}, more than any file kvpr reads here",
            crate::human_bytes(limit)
        ),
    };
    if meta.len() > limit {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

/// Opens `path` for reading without blocking: opening a FIFO for reading
/// waits for a writer, so it is opened non-blocking (no effect on a regular
/// file) and the caller refuses whatever is not a regular file.
pub fn open_input(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK);
    }
    o.open(path)
}

/// [`read_limited`], as UTF-8 text.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| PlansError::Input {
        path: path.to_path_buf(),
        reason: "is not UTF-8 text".into(),
    })
}

/// Reads `path` (at most [`MAX_JSON_BYTES`]), checks its `schema` field equals
/// `schema`, and parses it as `T`.
pub fn load_json<T: DeserializeOwned>(path: &Path, schema: &'static str) -> Result<T> {
    let text = read_text_limited(path, MAX_JSON_BYTES)?;
    parse_json(path, &text, schema)
}

/// Parses `text` (read from `path`, used only in messages) as a `T` of `schema`.
pub(crate) fn parse_json<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    schema: &'static str,
) -> Result<T> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| PlansError::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        field: ".".into(),
        message: e.to_string(),
    })?;
    match value.get("schema").and_then(|s| s.as_str()) {
        Some(s) if s == schema => {}
        Some(s) => {
            return Err(PlansError::Schema {
                path: path.to_path_buf(),
                found: s.to_string(),
                expected: schema,
            })
        }
        None => {
            return Err(PlansError::Schema {
                path: path.to_path_buf(),
                found: "(missing)".into(),
                expected: schema,
            })
        }
    }
    // Parse again from text (not the Value) so errors carry line and column.
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        PlansError::Json {
            path: path.to_path_buf(),
            line: inner.line(),
            column: inner.column(),
            field,
            message: strip_position(&inner.to_string()),
        }
    })
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a
/// rename, so a reader sees the old file or the whole new one, never half.
///
/// - A path that exists and is not a regular file (a device such as
///   `/dev/full`, a FIFO, a socket, a folder or a symlink) is refused, never
///   replaced: [`check_output_path`].
/// - The new file gets the permissions of the file it replaces, or those a
///   plain `File::create` gives (`0666` less the umask).
/// - The temporary file is `.{name}.kvpr-tmp.{pid}.{n}` beside the target. It is
///   removed on every error; one left by a process that was killed (its pid no
///   longer runs) is removed by the next write to the same target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // Creating the temporary file is itself the check that the folder takes files.
    let existing = inspect_output(path)?;
    let (dir, name) = split_target(path)?;
    remove_stale_temps(dir, &name);
    let tmp = dir.join(temp_name(&name));
    let io = |source| PlansError::Io {
        path: path.to_path_buf(),
        source,
    };
    let write = || -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io)?;
        if let Some(perm) = existing {
            f.set_permissions(perm).map_err(io)?;
        }
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Checks, before any long work, that [`write_atomic`] can write `path`: it is
/// absent or a regular file, and its folder exists and takes new files.
/// Returns the permissions of the file it would replace, if any.
pub fn check_output_path(path: &Path) -> Result<Option<std::fs::Permissions>> {
    let existing = inspect_output(path)?;
    let (dir, name) = split_target(path)?;
    // The one reliable test that the folder takes new files is to make one.
    let probe = dir.join(temp_name(&name));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|source| PlansError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    let _ = std::fs::remove_file(&probe);
    Ok(existing)
}

/// [`check_output_path`] short of making a file: the path is absent or a
/// regular file (whose permissions are returned), in a folder that exists.
fn inspect_output(path: &Path) -> Result<Option<std::fs::Permissions>> {
    let refuse = |reason: String| PlansError::Output {
        path: path.to_path_buf(),
        reason,
    };
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(refuse(
            "ends with /, so it names a folder; give the path of a file".into(),
        ));
    }
    let existing = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {
            if let Some(flag) = immutable(path) {
                return Err(refuse(format!(
                    "is {flag} (chattr), so it cannot be replaced; give another path"
                )));
            }
            Some(m.permissions())
        }
        Ok(m) => {
            return Err(refuse(format!(
                "exists and is not a regular file ({}); kvpr replaces only regular files, \
                 so give the path of a file",
                file_kind(&m.file_type())
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(PlansError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let (dir, _) = split_target(path)?;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(refuse(format!("{} is not a folder", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse(format!(
                "folder {} does not exist; create it first",
                dir.display()
            )))
        }
        Err(source) => {
            return Err(PlansError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    Ok(existing)
}

/// The folder (`.` for a bare name) and the file name of an output path.
fn split_target(path: &Path) -> Result<(&Path, String)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| PlansError::Output {
            path: path.to_path_buf(),
            reason: "names no file; give the path of a file".into(),
        })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

const TEMP_TAG: &str = ".kvpr-tmp.";

/// The longest file name the usual file systems take, in bytes.
const NAME_MAX: usize = 255;

/// What a temporary file's name starts with: `.{name}.kvpr-tmp.`, the name
/// cut (at a character boundary) so the whole temporary name, pid and
/// counter included, fits in [`NAME_MAX`] bytes whatever the target's length.
fn temp_prefix(name: &str) -> String {
    // `.` + name + tag + pid (at most 10 digits) + `.` + counter (at most 20).
    let room = NAME_MAX - 1 - TEMP_TAG.len() - 10 - 1 - 20;
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}{TEMP_TAG}", &name[..cut])
}

/// `.{name}.kvpr-tmp.{pid}.{n}`: hidden, recognisable, unique in this
/// process, and never longer than a name the target's folder takes.
fn temp_name(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}{}.{n}", temp_prefix(name), std::process::id())
}

/// Whether an existing file is immutable or append-only (Linux `chattr +i`
/// / `+a`): such a file cannot be replaced, even by its owner.
fn immutable(path: &Path) -> Option<&'static str> {
    #[cfg(target_os = "linux")]
    {
        const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
        const FS_IMMUTABLE_FL: libc::c_long = 0x10;
        const FS_APPEND_FL: libc::c_long = 0x20;
        use std::os::fd::AsRawFd;
        let file = open_input(path).ok()?;
        let mut flags: libc::c_long = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one `long` through the pointer, which
        // points at `flags`; the descriptor is open for the call's duration.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) };
        if rc == 0 && flags & FS_IMMUTABLE_FL != 0 {
            return Some("immutable");
        }
        if rc == 0 && flags & FS_APPEND_FL != 0 {
            return Some("append-only");
        }
    }
    let _ = path;
    None
}

/// A path's canonical form and, where it exists, its device and inode.
type Located = (PathBuf, Option<(u64, u64)>);

/// Where a path leads: its canonical path (the folder's, resolved through
/// symlinks and `..`, joined with the name; for a path that does not exist
/// yet, the nearest existing folder's joined with the rest) and, where it
/// exists, its device and inode.
fn locate(path: &Path) -> Located {
    #[cfg(unix)]
    let id = std::fs::metadata(path).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    });
    #[cfg(not(unix))]
    let id = None;
    if let Ok(c) = std::fs::canonicalize(path) {
        return (c, id);
    }
    // Not there yet: resolve the longest existing ancestor.
    let mut rest = Vec::new();
    let mut at = path;
    while let Some(n) = at.file_name() {
        rest.push(n.to_os_string());
        at = match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(mut c) = std::fs::canonicalize(at) {
            for n in rest.iter().rev() {
                c.push(n);
            }
            return (c, id);
        }
    }
    (path.to_path_buf(), id)
}

/// Checks a command's outputs before any work: each one [`check_output_path`]
/// passes, and none names one of the command's `inputs` (the same file by
/// path, symlink, `..` or hard link; or a file inside an input folder, such
/// as a model directory) or another output. Each entry is `(flag, path)`,
/// and the error names both flags.
pub fn check_outputs(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    let clash = |flag: &str, path: &Path, reason: String| {
        PlansError::Output {
        path: path.to_path_buf(),
        reason: format!("{flag}: {reason}; kvpr never writes over what it reads or writes twice, so give another path"),
    }
    };
    let ins: Vec<_> = inputs
        .iter()
        .map(|(f, p)| {
            (
                *f,
                locate(p),
                std::fs::metadata(p).is_ok_and(|m| m.is_dir()),
            )
        })
        .collect();
    let mut seen: Vec<(&str, Located)> = Vec::new();
    for &(flag, path) in outputs {
        // The clashes first: an output inside an input folder is refused
        // before its folder is probed, so kvpr never makes even a probe
        // file among what it reads.
        let (canon, id) = locate(path);
        for (iflag, (icanon, iid), is_dir) in &ins {
            if *icanon == canon || (id.is_some() && id == *iid) {
                return Err(clash(flag, path, format!("is the file {iflag} reads")));
            }
            if *is_dir && canon.parent() == Some(icanon.as_path()) {
                return Err(clash(
                    flag,
                    path,
                    format!("is inside the folder {iflag} reads"),
                ));
            }
        }
        for (oflag, (ocanon, oid)) in &seen {
            if *ocanon == canon || (id.is_some() && id == *oid) {
                return Err(clash(flag, path, format!("is the file {oflag} writes too")));
            }
        }
        check_output_path(path).map_err(|e| match e {
            PlansError::Output { path, reason } => PlansError::Output {
                path,
                reason: format!("{flag}: {reason}"),
            },
            e => e,
        })?;
        seen.push((flag, (canon, id)));
    }
    Ok(())
}

/// Removes the temporary files of `name` left by processes that no longer run.
/// Only where the system says which processes run (`/proc`); elsewhere nothing.
fn remove_stale_temps(dir: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = temp_prefix(name);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let regular = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        if regular && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What a non-regular file is, in words.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// A short, stable fingerprint (16 hex digits of SHA-256) of some bytes.
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        schema: String,
        inner: Inner,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        x: u32,
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let err = parse_json::<Doc>(Path::new("f.json"), "{\n  \"schema\": ,\n}", "s/v1")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.json:2:"), "{err}");
    }

    #[test]
    fn wrong_schema_is_refused_by_name() {
        let err = parse_json::<Doc>(Path::new("f.json"), r#"{"schema": "s/v9"}"#, "s/v1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"s/v9\"") && err.contains("\"s/v1\""),
            "{err}"
        );
    }

    #[test]
    fn bad_field_is_named_with_its_path() {
        let text = "{\"schema\": \"s/v1\",\n \"inner\": {\"x\": \"seven\"}}";
        let err = parse_json::<Doc>(Path::new("f.json"), text, "s/v1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f.json:2:") && err.contains("inner.x"),
            "{err}"
        );
    }

    #[test]
    fn devices_directories_and_large_files_are_refused_before_reading() {
        let e = load_json::<Doc>(Path::new("/dev/zero"), "s/v1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("not a regular file"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = load_json::<Doc>(dir.path(), "s/v1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let p = dir.path().join("big.json");
        std::fs::write(&p, vec![b' '; 2048]).unwrap();
        let e = read_limited(&p, 1024).unwrap_err().to_string();
        assert!(
            e.contains("big.json") && e.contains("larger than 1.00 KiB"),
            "{e}"
        );
        assert_eq!(read_limited(&p, 2048).unwrap().len(), 2048);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn atomic_write_refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.json");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = write_atomic(&link, b"new").unwrap_err().to_string();
        assert!(e.contains("exists and is not a regular file"), "{e}");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let e = write_atomic(dir.path(), b"new").unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
        let e = write_atomic(Path::new("/dev/null"), b"new")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a character device"), "{e}");
        // Nothing but the target and the link is left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn missing_folder_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/x.json");
        let e = check_output_path(&p).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(write_atomic(&p, b"x").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn new_files_follow_the_umask_and_replaced_files_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        let made = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        // What a plain File::create gives in the same folder, umask included.
        let q = dir.path().join("b.json");
        std::fs::File::create(&q).unwrap();
        let plain = std::fs::metadata(&q).unwrap().permissions().mode() & 0o777;
        assert_eq!(made, plain);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"two").unwrap();
        let kept = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(kept, 0o640);
    }

    #[test]
    fn a_dead_process_temp_file_is_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        // No process has a pid this large (above Linux's pid_max limit).
        let stale = dir.path().join(format!(".a.json{TEMP_TAG}4294967295.0"));
        std::fs::write(&stale, b"half").unwrap();
        let other = dir.path().join(format!(".b.json{TEMP_TAG}4294967295.0"));
        std::fs::write(&other, b"half").unwrap();
        write_atomic(&p, b"whole").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"whole");
        if Path::new("/proc/self").exists() {
            assert!(!stale.exists());
        }
        assert!(other.exists(), "another target's temp file is left alone");
    }

    /// A FIFO as an input is refused at once instead of blocking the read
    /// for a writer that never comes.
    #[cfg(unix)]
    #[test]
    fn a_fifo_input_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("hw.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_limited(&fifo, 1024).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    /// Outputs that name an input (directly, through a symlink, through
    /// `..`, by a hard link, or inside an input folder) or another output
    /// are refused naming both flags, and nothing is written.
    #[test]
    fn outputs_never_name_an_input_or_another_output() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let model = d.join("m.gguf");
        std::fs::write(&model, b"weights").unwrap();
        let folder = d.join("model-dir");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("config.json"), b"{}").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&model, d.join("link.gguf")).unwrap();
        std::fs::hard_link(&model, d.join("hard.gguf")).unwrap();
        let inputs = [
            ("--model", model.as_path()),
            ("--model-dir", folder.as_path()),
        ];
        let refused = |out: &Path, want: &str| {
            let e = check_outputs(&[("--summary-json", out)], &inputs)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--summary-json") && e.contains(want),
                "{}: {e}",
                out.display()
            );
        };
        refused(&model, "the file --model reads");
        refused(&d.join("sub/../m.gguf"), "the file --model reads");
        refused(&d.join("hard.gguf"), "the file --model reads");
        refused(
            &folder.join("config.json"),
            "inside the folder --model-dir reads",
        );
        refused(
            &folder.join("new.json"),
            "inside the folder --model-dir reads",
        );
        #[cfg(unix)]
        {
            refused(&d.join("link.gguf"), "the file --model reads");
            // A link to anything else is refused as a link.
            std::fs::write(d.join("other.txt"), b"x").unwrap();
            std::os::unix::fs::symlink(d.join("other.txt"), d.join("link.txt")).unwrap();
            refused(&d.join("link.txt"), "symbolic link");
        }
        assert_eq!(std::fs::read(&model).unwrap(), b"weights");
        // Two outputs, one file (not there yet, one of them by `..`).
        let (a, b) = (d.join("x.out"), d.join("sub/../x.out"));
        let e = check_outputs(&[("--csv", a.as_path()), ("--json", b.as_path())], &inputs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--json") && e.contains("--csv writes too"),
            "{e}"
        );
        check_outputs(
            &[("--csv", a.as_path()), ("--json", &d.join("y.out"))],
            &inputs,
        )
        .unwrap();
        assert!(!a.exists(), "the check writes nothing");
    }

    /// A trailing slash, a missing folder and a name too long for its
    /// temporary file are refused before anything is written; a name of 250
    /// bytes is written (its temporary name is cut to fit).
    #[test]
    fn output_paths_are_checked_whole_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let slash = PathBuf::from(format!("{}/new.out/", d.display()));
        let e = check_outputs(&[("--trace", slash.as_path())], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--trace") && e.contains("ends with /"), "{e}");
        let e = check_outputs(&[("--plan-out", &d.join("nodir/p.json"))], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--plan-out") && e.contains("does not exist"),
            "{e}"
        );
        let long = d.join("a".repeat(250));
        check_outputs(&[("--out", long.as_path())], &[]).unwrap();
        write_atomic(&long, b"ok").unwrap();
        assert_eq!(std::fs::read(&long).unwrap(), b"ok");
        let leftovers: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(TEMP_TAG))
            .collect();
        assert!(leftovers.is_empty());
        assert!(temp_name(&"é".repeat(200)).len() <= NAME_MAX);
    }
}
