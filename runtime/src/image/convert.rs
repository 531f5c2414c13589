//! Image formats with `qemu-img`: detect a file's format, qcow2 → raw, raw → qcow2.

use std::path::{Path, PathBuf};

use super::tool::{self, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("`qemu-img info` on {path} printed unexpected JSON: {detail}")]
    Info { path: PathBuf, detail: String },
    #[error(
        "{path} has a backing file ({backing}); pgimg takes only self-contained images \
         (flatten it with `qemu-img convert -O qcow2`)"
    )]
    BackingFile { path: PathBuf, backing: String },
    #[error("{0} already exists; pgimg does not overwrite it")]
    Exists(PathBuf),
}

/// A disk image format as `qemu-img` names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub enum Format {
    Raw,
    Qcow2,
    /// vmdk, vhdx, …: converted to raw like qcow2.
    Other(String),
}

impl Format {
    pub fn as_str(&self) -> &str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Other(name) => name,
        }
    }

    fn from_qemu(name: &str) -> Format {
        match name {
            "raw" => Format::Raw,
            "qcow2" => Format::Qcow2,
            other => Format::Other(other.to_string()),
        }
    }
}

impl From<Format> for String {
    fn from(f: Format) -> String {
        f.as_str().to_string()
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: Format,
    /// Size of the disk the image holds.
    pub virtual_size: u64,
}

/// `qemu-img info --output=json`; refuses images with a backing file, which
/// would make qemu-img read another file named inside the image.
pub fn detect(path: &Path) -> Result<ImageInfo, ConvertError> {
    let out = tool::run_ok([
        "qemu-img".as_ref(),
        "info".as_ref(),
        "--output=json".as_ref(),
        path.as_os_str(),
    ])?;
    parse_info(path, &out.stdout)
}

fn parse_info(path: &Path, json: &[u8]) -> Result<ImageInfo, ConvertError> {
    let bad = |detail: String| ConvertError::Info {
        path: path.to_path_buf(),
        detail,
    };
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let format = v["format"]
        .as_str()
        .ok_or_else(|| bad("no \"format\"".to_string()))?;
    let virtual_size = v["virtual-size"]
        .as_u64()
        .ok_or_else(|| bad("no \"virtual-size\"".to_string()))?;
    if let Some(backing) = v.get("backing-filename").and_then(|b| b.as_str()) {
        return Err(ConvertError::BackingFile {
            path: path.to_path_buf(),
            backing: backing.to_string(),
        });
    }
    Ok(ImageInfo {
        format: Format::from_qemu(format),
        virtual_size,
    })
}

fn refuse_existing(dst: &Path) -> Result<(), ConvertError> {
    if dst.symlink_metadata().is_ok() {
        return Err(ConvertError::Exists(dst.to_path_buf()));
    }
    Ok(())
}

/// Converts `src` (of `format`, never probed again) to a sparse raw file
/// `dst`; qemu-img skips zero runs, so unallocated clusters stay holes.
pub fn to_raw(src: &Path, format: &Format, dst: &Path) -> Result<(), ConvertError> {
    refuse_existing(dst)?;
    tool::run_ok([
        "qemu-img".as_ref(),
        "convert".as_ref(),
        "-f".as_ref(),
        format.as_str().as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ])?;
    Ok(())
}

/// Converts raw `src` to qcow2 `dst`, zlib-compressed when `compress` (about
/// 3× slower, portable to every qemu-img).
pub fn to_qcow2(src: &Path, dst: &Path, compress: bool) -> Result<(), ConvertError> {
    refuse_existing(dst)?;
    let mut argv: Vec<&std::ffi::OsStr> = vec![
        "qemu-img".as_ref(),
        "convert".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
    ];
    if compress {
        argv.push("-c".as_ref());
    }
    argv.extend([src.as_os_str(), dst.as_os_str()]);
    tool::run_ok(argv)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_json_parsing() {
        let p = Path::new("x.img");
        let qcow = br#"{"virtual-size": 2361393152, "filename": "x.img", "format": "qcow2",
            "actual-size": 631967744, "dirty-flag": false}"#;
        assert_eq!(
            parse_info(p, qcow).unwrap(),
            ImageInfo {
                format: Format::Qcow2,
                virtual_size: 2361393152
            }
        );
        let vmdk = br#"{"virtual-size": 1024, "format": "vmdk"}"#;
        assert_eq!(
            parse_info(p, vmdk).unwrap().format,
            Format::Other("vmdk".into())
        );
        let backed =
            br#"{"virtual-size": 1024, "format": "qcow2", "backing-filename": "/etc/shadow"}"#;
        let err = parse_info(p, backed).unwrap_err().to_string();
        assert!(err.contains("backing file (/etc/shadow)"), "{err}");
        for bad in [
            &b"not json"[..],
            br#"{"format": "raw"}"#,
            br#"{"virtual-size": 1}"#,
        ] {
            assert!(matches!(parse_info(p, bad), Err(ConvertError::Info { .. })));
        }
    }

    #[test]
    fn detect_and_round_trip_with_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut data = vec![0u8; 4 << 20];
        data[1 << 20..(1 << 20) + 5].copy_from_slice(b"hello");
        std::fs::write(&raw, &data).unwrap();
        let qcow = dir.path().join("disk.qcow2");
        to_qcow2(&raw, &qcow, true).unwrap();
        let info = detect(&qcow).unwrap();
        assert_eq!(info.format, Format::Qcow2);
        assert_eq!(info.virtual_size, 4 << 20);
        assert_eq!(detect(&raw).unwrap().format, Format::Raw);

        let back = dir.path().join("back.raw");
        to_raw(&qcow, &info.format, &back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), data);
        let err = to_raw(&qcow, &info.format, &back).unwrap_err();
        assert!(matches!(err, ConvertError::Exists(_)));
    }
}
