//! `pgimg run`: the pipeline, one named stage after another —
//! acquire → grow → attach → check+resize → mount → recipe → finalize → output
//! — each a function over one [`Build`] context.
//!
//! Every resource the build acquires is a field of [`Build`], declared so
//! that on any error (or SIGINT/SIGTERM, which the sandbox turns into an
//! error) they are dropped in reverse order of acquisition: the sandbox is torn
//! down, the root file system unmounted, the loop device detached, and the
//! working files removed. A SIGKILL skips all of that, but the private mount
//! namespace takes the mounts with it and the auto-clear loop device then
//! detaches. The base image is only ever read, and nothing appears under the
//! output name until the final rename.

pub mod manifest;
pub mod output;
pub mod stages;
pub mod workdir;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;
use pgimg_stdlib::ctx::Journal;
use pgimg_stdlib::fetch::HttpFetcher;
use pgimg_stdlib::Target;

use crate::engine::{display_path, Limits};
use crate::host::{self, RecipeInputs};
use crate::image::{self, ext4, inspect::MANIFEST_PATH, LoopGuard, WorkImage};
use crate::sandbox::{self, interrupt, ChrootTarget, Mount, SandboxOptions};
use manifest::{finalize_options, BaseRecord, Manifest};
use stages::{log, StageTimer};
use workdir::WorkDir;

pub use output::sha256_file;

/// Where the build starts from.
#[derive(Debug, Clone)]
pub enum Base {
    /// A disk image (raw or qcow2) with a GPT and an ext4 root partition.
    Image(PathBuf),
    /// A directory used as the root in place (`--rootfs`); no image is written.
    Rootfs(PathBuf),
}

pub use crate::image::convert::Format;

/// Everything `pgimg run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub recipe: PathBuf,
    /// Final image size in bytes (grow only).
    pub size: Option<u64>,
    pub output: PathBuf,
    pub format: Format,
    pub compress: bool,
    /// `--set`, `--mirror`, `--assets`, and with `--locked` the lock.
    pub inputs: RecipeInputs,
    pub cache_dir: PathBuf,
    pub limits: Limits,
}

/// The recipe itself failed (its message already names file:line:col).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecipeFailed(pub String);

/// One build in progress. Fields holding resources are declared in reverse
/// order of acquisition: Rust drops fields in declaration order, so an error
/// anywhere tears down the sandbox, then the root mount, then the loop
/// device, then the work folder.
pub struct Build<'a> {
    target: Option<Arc<ChrootTarget>>,
    root_mount: Option<Mount>,
    loop_dev: Option<LoopGuard>,
    work: Option<WorkDir>,
    opts: &'a RunOptions,
    stages: StageTimer,
    base: Option<BaseRecord>,
    journal: Option<Journal>,
}

impl<'a> Build<'a> {
    fn new(opts: &'a RunOptions) -> Build<'a> {
        Build {
            target: None,
            root_mount: None,
            loop_dev: None,
            work: None,
            opts,
            stages: StageTimer::default(),
            base: None,
            journal: None,
        }
    }

    fn work(&self) -> &WorkDir {
        self.work
            .as_ref()
            .expect("the work folder exists from acquire on")
    }

    fn loop_dev(&self) -> &LoopGuard {
        self.loop_dev.as_ref().expect("attached")
    }

    fn target(&self) -> Arc<ChrootTarget> {
        self.target.clone().expect("mounted")
    }

    fn manifest(&self) -> Result<Manifest> {
        let journal = self.journal.as_ref().expect("the recipe ran");
        Ok(Manifest {
            pgimg_version: env!("CARGO_PKG_VERSION"),
            recipe: display_path(&self.opts.recipe),
            params: self.opts.inputs.params.clone(),
            mirrors: self.opts.inputs.mirrors.clone(),
            base: self.base.clone().expect("acquired"),
            arch: pgimg_stdlib::target::host_arch()
                .map_err(anyhow::Error::msg)?
                .to_string(),
            inputs: journal.inputs.clone(),
            finalize: finalize_options(journal)?,
            stages: self.stages.done.clone(),
            output: None,
        })
    }
}

/// `pgimg run` on an image: the whole pipeline.
pub fn build_image(opts: &RunOptions, base: &Path) -> Result<Manifest> {
    let mut b = Build::new(opts);
    acquire(&mut b, base)?;
    grow(&mut b)?;
    attach(&mut b)?;
    check_resize(&mut b)?;
    mount(&mut b)?;
    recipe(&mut b)?;
    finalize(&mut b)?;
    output(&mut b)
}

/// `pgimg run --rootfs DIR`: the recipe and finalize, in place.
pub fn build_rootfs(opts: &RunOptions, dir: &Path) -> Result<Manifest> {
    let mut b = Build::new(opts);
    b.base = Some(BaseRecord {
        path: dir.display().to_string(),
        sha256: None,
    });
    b.target = Some(b.stages.run("mount", || {
        Ok(Arc::new(ChrootTarget::setup(dir, sandbox_options(opts)?)?))
    })?);
    recipe(&mut b)?;
    let mut m = b.manifest()?;
    let target = b.target.take().expect("mounted");
    let journal = b.journal.take().expect("the recipe ran");
    b.stages.run("finalize", || {
        let report = sandbox::finalize(&target, &finalize_options(&journal)?);
        let down = target.teardown();
        log(&format!("finalize: {}", report?));
        down?;
        Ok(())
    })?;
    m.stages = b.stages.done;
    Ok(m)
}

/// Copies the base into the work folder (the base is only read) and records
/// its sha256.
fn acquire(b: &mut Build, base: &Path) -> Result<()> {
    if b.opts.output.exists() {
        bail!(
            "{} exists; remove it or choose another --output",
            b.opts.output.display()
        );
    }
    let work = WorkDir::create(&b.opts.output)?;
    let sha = b.stages.run("acquire", || {
        let sha =
            sha256_file(base).with_context(|| format!("reading the base {}", base.display()))?;
        image::copy_base(base, &work.image())?;
        Ok(sha)
    });
    b.work = Some(work);
    b.base = Some(BaseRecord {
        path: base.display().to_string(),
        sha256: Some(sha?),
    });
    Ok(())
}

/// Extends the file to `--size`, moving the GPT backup header and growing
/// the root partition.
fn grow(b: &mut Build) -> Result<()> {
    let Some(size) = b.opts.size else {
        return Ok(());
    };
    let image = b.work().image();
    b.stages.run("grow", || {
        let outcome = image::grow(&image, size)?;
        log(&format!("grow: {outcome:?}"));
        Ok(())
    })
}

/// Attaches the root partition to a loop device by offset and size.
fn attach(b: &mut Build) -> Result<()> {
    let image = b.work().image();
    let lo = b.stages.run("attach", || {
        let img = WorkImage::open(&image)?;
        let lo = img.attach_root()?;
        log(&format!(
            "root partition {} ({} bytes at offset {}) on {}",
            img.root().number,
            img.root().size(),
            img.root().offset(),
            lo.path().display()
        ));
        Ok(lo)
    })?;
    b.loop_dev = Some(lo);
    Ok(())
}

/// `e2fsck -fp` and `resize2fs` to fill the (grown) partition.
fn check_resize(b: &mut Build) -> Result<()> {
    let dev = b.loop_dev().path().to_path_buf();
    b.stages.run("check+resize", || {
        ext4::check_and_resize(&dev)?;
        Ok(())
    })
}

/// Mounts the root file system and sets up the sandbox on it.
fn mount(b: &mut Build) -> Result<()> {
    let mnt = b.work().mountpoint();
    let dev = b.loop_dev().path().to_path_buf();
    let opts = b.opts;
    // The mount is kept before the sandbox is set up, so a failing setup
    // still unmounts it.
    let stages = &mut b.stages;
    let root_mount = &mut b.root_mount;
    let target = stages.run("mount", || {
        std::fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        *root_mount = Some(Mount::host(
            Some(&dev),
            &mnt,
            Some("ext4"),
            MsFlags::empty(),
            None,
            "root file system",
        )?);
        Ok(Arc::new(ChrootTarget::setup(&mnt, sandbox_options(opts)?)?))
    })?;
    b.target = Some(target);
    Ok(())
}

/// Runs the recipe against the sandbox; on failure the sandbox is torn
/// down before the error returns.
fn recipe(b: &mut Build) -> Result<()> {
    let target = b.target();
    let opts = b.opts;
    let run = b.stages.run("recipe", || {
        let run = host::run_recipe(
            &opts.recipe,
            &opts.inputs,
            target.clone(),
            Arc::new(|loc, msg| eprintln!("{loc}: {msg}")),
            &opts.limits,
        );
        Ok(run)
    })?;
    match run.into_journal() {
        Ok(journal) => {
            b.journal = Some(journal);
            Ok(())
        }
        Err(msg) => {
            if let Err(t) = target.teardown() {
                log(&format!("warning: tearing down the sandbox: {t}"));
            }
            Err(RecipeFailed(msg.0).into())
        }
    }
}

/// Cleans the image for first boot, embeds the manifest, tears down the
/// sandbox, returns free space as holes, unmounts, checks the file system
/// and detaches the loop device.
fn finalize(b: &mut Build) -> Result<()> {
    let embedded = serde_json::to_vec_pretty(&b.manifest()?)?;
    let fin = finalize_options(b.journal.as_ref().expect("the recipe ran"))?;
    let target = b.target.take().expect("mounted");
    let root_mount = b.root_mount.take().expect("mounted");
    let lo = b.loop_dev.take().expect("attached");
    let mnt = b.work().mountpoint();
    b.stages.run("finalize", move || {
        let report = sandbox::finalize(&target, &fin);
        let written = report.is_ok().then(|| {
            target
                .root()
                .write(MANIFEST_PATH, &embedded, pgimg_stdlib::Attrs::mode(0o644))
        });
        let down = target.teardown();
        // The target holds a descriptor on the mountpoint; the unmount below
        // would be refused (EBUSY) while it lives.
        drop(target);
        log(&format!("finalize: {}", report?));
        written.transpose()?;
        down?;
        let trimmed = ext4::fstrim(&mnt)?;
        log(&format!("fstrim returned {trimmed} bytes as holes"));
        root_mount.close()?;
        ext4::check_clean(lo.path())?;
        lo.close()?;
        Ok(())
    })
}

/// Writes the output and its sidecars; returns the manifest.
fn output(b: &mut Build) -> Result<Manifest> {
    let mut m = b.manifest()?;
    let opts = b.opts;
    let work = b.work.take().expect("acquired");
    let record = b.stages.run("output", || {
        output::write_output(&work, &opts.output, opts.format, opts.compress)
    })?;
    m.stages = b.stages.done.clone();
    m.output = Some(record);
    let json = serde_json::to_string_pretty(&m)?;
    let manifest_path = output::sidecar(&opts.output, "manifest.json");
    std::fs::write(&manifest_path, json + "\n")
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    b.stages.log_summary();
    Ok(m)
}

fn sandbox_options(opts: &RunOptions) -> Result<SandboxOptions> {
    let fetcher = HttpFetcher::new(opts.cache_dir.join("downloads"))
        .context("setting up the downloader")?
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_interrupt(&interrupt::INTERRUPTED);
    let mut s = SandboxOptions::new(Box::new(fetcher));
    s.cache_dir = Some(opts.cache_dir.clone());
    Ok(s)
}
