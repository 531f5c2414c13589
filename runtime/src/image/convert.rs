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
    #[error(
        "{path} keeps its data in another file ({data_file}); pgimg takes only self-contained \
         images (flatten it with `qemu-img convert -O qcow2`)"
    )]
    DataFile { path: PathBuf, data_file: String },
    #[error(
        "{path} is a {format} image; pgimg takes raw and qcow2 base images only (a {format} \
         image may name other files, e.g. a VMDK extent); convert it first with \
         `qemu-img convert -O qcow2`, checking what it refers to"
    )]
    Unsupported { path: PathBuf, format: String },
    #[error("{0} already exists; pgimg does not overwrite it")]
    Exists(PathBuf),
}

/// An image format pgimg reads (base) and writes (`--format`), as
/// `qemu-img` names it. Others (vmdk, vhdx, …) are refused as bases: their
/// headers can name host files that qemu-img would read as the disk's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    /// The name `qemu-img` and file extensions use.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
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

/// `qemu-img info --output=json` (the format is probed from the content, not
/// taken from the name); refuses every image that names another file, which
/// qemu-img would read as part of the disk: formats other than raw and qcow2,
/// and a qcow2 with a backing file or an external data file.
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
    let format = match format {
        "raw" => Format::Raw,
        "qcow2" => Format::Qcow2,
        other => {
            return Err(ConvertError::Unsupported {
                path: path.to_path_buf(),
                format: other.to_string(),
            })
        }
    };
    for key in ["backing-filename", "full-backing-filename"] {
        if let Some(backing) = v.get(key).and_then(|b| b.as_str()) {
            return Err(ConvertError::BackingFile {
                path: path.to_path_buf(),
                backing: backing.to_string(),
            });
        }
    }
    if let Some(data_file) = v["format-specific"]["data"].get("data-file") {
        return Err(ConvertError::DataFile {
            path: path.to_path_buf(),
            data_file: data_file.as_str().unwrap_or("?").to_string(),
        });
    }
    // qemu-img 8+ also lists the nodes it opened: the image's own file is the
    // only one a self-contained image has. Older ones print no `children`.
    if let Some(children) = v.get("children").and_then(|c| c.as_array()) {
        for child in children {
            let name = child["name"].as_str().unwrap_or("?");
            if name != "file" {
                let other = child["info"]["filename"].as_str().unwrap_or(name);
                return Err(ConvertError::DataFile {
                    path: path.to_path_buf(),
                    data_file: other.to_string(),
                });
            }
        }
    }
    Ok(ImageInfo {
        format,
        virtual_size,
    })
}

fn refuse_existing(dst: &Path) -> Result<(), ConvertError> {
    if dst.symlink_metadata().is_ok() {
        return Err(ConvertError::Exists(dst.to_path_buf()));
    }
    Ok(())
}

/// Converts `src` (of `format`, never probed again) to a raw file
/// `dst`, every block written (`-S 0`): the finalize stage's fstrim returns free space as holes.
pub fn to_raw(src: &Path, format: &Format, dst: &Path) -> Result<(), ConvertError> {
    refuse_existing(dst)?;
    tool::run_ok([
        "qemu-img".as_ref(),
        "convert".as_ref(),
        "-f".as_ref(),
        format.as_str().as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        // Without `-S 0` qemu-img turns zero runs inside files into holes, which an
        // EBS-direct upload would skip (a missing block on an encrypted volume
        // reads back as garbage); fstrim makes free space sparse later.
        "-S".as_ref(),
        "0".as_ref(),
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
        assert!(matches!(
            parse_info(p, vmdk),
            Err(ConvertError::Unsupported { .. })
        ));
        let data_file = br#"{"virtual-size": 1024, "format": "qcow2",
            "format-specific": {"type": "qcow2", "data": {"data-file": "/x/host.raw"}}}"#;
        let err = parse_info(p, data_file).unwrap_err().to_string();
        assert!(err.contains("another file (/x/host.raw)"), "{err}");
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
