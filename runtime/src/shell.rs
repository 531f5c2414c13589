//! `pgimg shell IMAGE [-- CMD...]`: the image's root mounted as for a build
//! (in place: changes are written to IMAGE), with what its fstab mounts
//! under `/boot`, an interactive shell or the given command inside,
//! everything torn down afterwards.

use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::MsFlags;

use crate::image::boot_mounts::BootMounts;
use crate::image::{ext4, WorkImage};
use crate::sandbox::{ChrootTarget, Mount, SandboxOptions};

/// Runs `command` (default: a login bash) inside `image_path`'s root and
/// returns its exit code. Call inside the private mount namespace.
pub fn shell(image_path: &Path, command: &[String]) -> Result<i32> {
    let img = WorkImage::open(image_path)?;
    let lo = img.attach_root()?;
    ext4::check_preen(lo.path())?;
    let mnt = tempfile::Builder::new()
        .prefix("pgimg-shell-")
        .tempdir()
        .context("creating a mountpoint")?;
    // Keep the directory itself out of TempDir's recursive delete: if the
    // unmount failed, that delete would walk into the image.
    let mnt_path = mnt.keep();
    let code = (|| -> Result<i32> {
        let root_mount = Mount::host(
            Some(lo.path()),
            &mnt_path,
            Some("ext4"),
            MsFlags::empty(),
            None,
            "root file system",
        )?;
        // As in a build: a write to /boot/efi must land on the ESP the
        // machine boots from, not in the root file system's hidden folder.
        // The root's descriptor must be gone before the unmount (EBUSY).
        let boot_mounts = {
            let root = pgimg_stdlib::ImageRoot::open(&mnt_path)?;
            BootMounts::mount(image_path, &root, &|l| {
                pgimg_stdlib::stderr_line!("pgimg: {l}")
            })
            .context("mounting what the image's fstab mounts under /boot")?
        };
        let fetcher = pgimg_stdlib::fetch::RecordingFetcher::default();
        let target = ChrootTarget::setup(&mnt_path, SandboxOptions::new(Box::new(fetcher)))?;
        let argv: Vec<String> = if command.is_empty() {
            vec!["/bin/bash".into(), "-l".into()]
        } else {
            command.to_vec()
        };
        let mut cmd = pgimg_stdlib::Command::new(argv);
        cmd.label = "shell".into();
        let code = target.run_interactive(&cmd);
        target.teardown()?;
        // The target holds a descriptor on the mountpoint: the unmount would
        // be refused (EBUSY) while it lives.
        drop(target);
        boot_mounts.close()?;
        root_mount.close()?;
        Ok(code?)
    })();
    let _ = std::fs::remove_dir(&mnt_path);
    lo.close()?;
    code
}
