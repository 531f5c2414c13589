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

mod base_digest;
pub mod base_source;
pub mod cache;
pub mod manifest;
pub mod output;
pub mod stages;
pub mod workdir;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::HumanBytes;
use nix::mount::MsFlags;
use pgimg_stdlib::ctx::Journal;
use pgimg_stdlib::fetch::HttpFetcher;
use pgimg_stdlib::Target;

use crate::engine::{display_path, Limits};
use crate::host::{self, RecipeInputs};
use crate::image::boot_mounts::BootMounts;
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
    /// The step cache (`None` with `--no-cache`).
    pub step_cache: Option<StepCacheOptions>,
    /// Where the base was downloaded from (`--base URL`), for the manifest.
    pub base_download: Option<base_source::BaseDownload>,
}

/// How a build uses the step cache under `<cache_dir>/steps`.
#[derive(Debug, Clone)]
pub struct StepCacheOptions {
    /// Bound on the checkpoints' total allocated size; least recently used go first.
    pub max_size: u64,
    /// Seconds of executed calls after which the next call takes a checkpoint.
    pub min_seconds: f64,
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
    /// Declared before `root_mount`: dropped (unmounted) before it.
    boot_mounts: Option<BootMounts>,
    root_mount: Option<Mount>,
    loop_dev: Option<LoopGuard>,
    /// The output's hash under way; stopped before the work folder goes.
    prehash: Option<output::Prehash>,
    work: Option<WorkDir>,
    opts: &'a RunOptions,
    stages: StageTimer,
    base: Option<BaseRecord>,
    journal: Option<Journal>,
    cache: Option<Arc<cache::Session>>,
    resume: Option<cache::Resume>,
    cache_report: Option<manifest::CacheReport>,
}

impl<'a> Build<'a> {
    fn new(opts: &'a RunOptions) -> Build<'a> {
        Build {
            target: None,
            boot_mounts: None,
            root_mount: None,
            loop_dev: None,
            prehash: None,
            work: None,
            opts,
            stages: StageTimer::default(),
            base: None,
            journal: None,
            cache: None,
            resume: None,
            cache_report: None,
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
            cache: self.cache_report.clone(),
        })
    }
}

/// `pgimg run` on an image: the whole pipeline.
pub fn build_image(opts: &RunOptions, base: &Path) -> Result<Manifest> {
    let mut b = Build::new(opts);
    let built = (|| {
        acquire(&mut b, base)?;
        grow(&mut b)?;
        attach(&mut b)?;
        check_resize(&mut b)?;
        mount(&mut b)?;
        recipe(&mut b)?;
        finalize(&mut b)?;
        output(&mut b)
    })();
    // Asked before the teardown frees the work file's blocks again.
    if built.is_err() {
        if let Some(note) = host_space_note(&opts.output) {
            log(&note);
        }
    }
    built
}

/// When the host file system that holds the work file (beside `output`) is
/// full, the loop device's writes to it fail: ext4 aborts its journal and
/// remounts the image read-only, and the recipe fails with "Read-only file
/// system" while the cause is only in the kernel log ("critical space
/// allocation error", "lost async page write").
fn host_space_note(output: &Path) -> Option<String> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let free = sandbox::chroot::free_bytes(dir)?;
    (free < sandbox::chroot::HOST_ROOM).then(|| {
        format!(
            "note: the host file system holding {} has {} free: the image file may \
             have failed to grow under the build's writes, which the image then sees as \
             I/O errors (a read-only file system, \"critical space allocation error\" in \
             dmesg). Free space there or write --output to another file system.",
            dir.display(),
            HumanBytes(free)
        )
    })
}

/// `pgimg run --rootfs DIR`: the recipe and finalize, in place.
pub fn build_rootfs(opts: &RunOptions, dir: &Path) -> Result<Manifest> {
    let mut b = Build::new(opts);
    b.base = Some(BaseRecord {
        path: dir.display().to_string(),
        sha256: None,
        download: None,
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
    let out = &b.opts.output;
    for path in [
        out.clone(),
        output::sidecar(out, "sha256"),
        output::sidecar(out, "manifest.json"),
    ] {
        if path.exists() {
            return Err(crate::error::UsageError(format!(
                "{} exists; remove it or choose another --output (pgimg never replaces \
                 an output or its sidecars)",
                path.display()
            ))
            .into());
        }
    }
    let work = WorkDir::create(&b.opts.output)?;
    let opts = b.opts;
    let acquired = b.stages.run("acquire", || {
        let image = work.image();
        let remembered = base_digest::remembered(&opts.cache_dir, base);
        let (sha, mut copied) = match remembered {
            Some(sha) => {
                log(&format!(
                    "base: sha256 {sha}, remembered (file unchanged since hashed)"
                ));
                (sha, false)
            }
            // Hashing and copying read the same file, each on a core; the
            // copy is only wasted when a checkpoint replaces it below.
            None => std::thread::scope(|s| {
                let hashing = s.spawn(|| base_sha256(opts, base));
                let copy = image::copy_base(base, &image);
                let sha = hashing
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                copy?;
                anyhow::Ok((sha?, true))
            })?,
        };
        let (session, resume) = match &opts.step_cache {
            Some(c) => match step_cache(opts, c, &sha) {
                Ok(found) => found,
                Err(e) => {
                    log(&format!("warning: building without the step cache: {e:#}"));
                    (None, None)
                }
            },
            None => (None, None),
        };
        let resume = match resume {
            None => None,
            Some(r) => {
                if copied {
                    std::fs::remove_file(&image)
                        .with_context(|| format!("removing {}", image.display()))?;
                    copied = false;
                }
                match cache::Session::restore(&cache::Store::new(&opts.cache_dir), &r, &image) {
                    Ok(()) => Some(r),
                    Err(e) => {
                        // Evicted or damaged meanwhile: the cache must never fail a build.
                        log(&format!("warning: building from the start: {e:#}"));
                        if let Some(s) = &session {
                            s.forget_resume();
                        }
                        let _ = std::fs::remove_file(&image);
                        None
                    }
                }
            }
        };
        if resume.is_none() && !copied {
            image::copy_base(base, &image)?;
        }
        Ok((sha, session, resume))
    });
    b.work = Some(work);
    let (sha, session, resume) = acquired?;
    b.base = Some(BaseRecord {
        path: base.display().to_string(),
        sha256: Some(sha),
        download: b.opts.base_download.clone(),
    });
    b.cache = session;
    b.resume = resume;
    Ok(())
}

/// Reads the whole base for its sha256, and remembers the digest for the
/// next build while the file stays unchanged.
fn base_sha256(opts: &RunOptions, base: &Path) -> Result<String> {
    let before = base_digest::FileVersion::of(base)?;
    let sha = sha256_file(base).with_context(|| format!("reading the base {}", base.display()))?;
    if let Err(e) = base_digest::remember(&opts.cache_dir, base, &before, &sha) {
        log(&format!(
            "warning: the base's digest is not remembered: {e:#}"
        ));
    }
    Ok(sha)
}

/// The first key, the checkpoint to resume from (found by a probe run of the
/// recipe), and the session of the real run.
fn step_cache(
    opts: &RunOptions,
    c: &StepCacheOptions,
    base_sha256: &str,
) -> Result<(Option<Arc<cache::Session>>, Option<cache::Resume>)> {
    let lock = opts
        .recipe
        .parent()
        .map(|d| d.join("pgimg.lock"))
        .filter(|p| p.is_file());
    let k0 = cache::KeyInputs {
        identity: cache::build_identity()?,
        pgimg_version: env!("CARGO_PKG_VERSION").to_string(),
        base_sha256: base_sha256.to_string(),
        size: opts.size,
        params: opts.inputs.params.clone(),
        mirrors: opts.inputs.mirrors.clone(),
        arch: pgimg_stdlib::target::host_arch()
            .map_err(anyhow::Error::msg)?
            .to_string(),
        lock_sha256: lock.map(|p| sha256_file(&p)).transpose()?,
        locked: opts.inputs.lock.is_some(),
    }
    .first_key();
    let store = cache::Store::new(&opts.cache_dir);
    let recipe = display_path(&opts.recipe);
    let resume = match cache::Session::probe(&store, &recipe, k0.clone()) {
        None => None,
        Some(probe) => {
            let probe = Arc::new(probe);
            let target = pgimg_stdlib::FakeTarget::new(
                &pgimg_stdlib::FakeOs::default(),
                Box::new(pgimg_stdlib::fetch::RecordingFetcher::default()),
            )
            .context("creating the probe's fake root")?;
            let _ = host::run_recipe_with(
                &opts.recipe,
                &opts.inputs,
                Arc::new(target),
                Arc::new(|_, _| {}),
                &opts.limits,
                Some(cache::as_steps(&probe)),
            );
            probe.found()
        }
    };
    match &resume {
        Some(r) => log(&format!(
            "step cache: resuming from the checkpoint after {} ({} steps)",
            r.record.after,
            r.record.steps.len()
        )),
        None => log("step cache: no checkpoint matches; building from the start"),
    }
    let session = cache::Session::build(
        store,
        &recipe,
        k0,
        resume.clone(),
        c.max_size,
        c.min_seconds,
    );
    Ok((Some(Arc::new(session)), resume))
}

/// Extends the file to `--size`, moving the GPT backup header and growing
/// the root partition; without `--size`, still moves a backup header left
/// short of the file's end and grows a root partition that stops short.
fn grow(b: &mut Build) -> Result<()> {
    if b.resume.is_some() {
        // The checkpoint was cut from an image already grown (the final size
        // is part of its key).
        return Ok(());
    }
    let image = b.work().image();
    let size = match b.opts.size {
        Some(size) => size,
        None => std::fs::metadata(&image)
            .with_context(|| format!("reading the size of {}", image.display()))?
            .len(),
    };
    b.stages.run("grow", || {
        let outcome = image::grow(&image, size)?;
        log(&format!("grow: {outcome}"));
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

/// Mounts the root file system and what its fstab mounts under `/boot`,
/// and sets up the sandbox on it.
fn mount(b: &mut Build) -> Result<()> {
    let mnt = b.work().mountpoint();
    let image = b.work().image();
    let dev = b.loop_dev().path().to_path_buf();
    let opts = b.opts;
    let borrowed = b.resume.as_ref().map(|r| r.record.borrowed.clone());
    // Each mount is kept as soon as it exists, so a failure after it still
    // unmounts it.
    let stages = &mut b.stages;
    let root_mount = &mut b.root_mount;
    let boot_mounts = &mut b.boot_mounts;
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
        let root = pgimg_stdlib::ImageRoot::open(&mnt)?;
        *boot_mounts = Some(
            BootMounts::mount(&image, &root, &|l| log(l))
                .context("mounting what the image's fstab mounts under /boot")?,
        );
        let mut sandbox = sandbox_options(opts)?;
        sandbox.resumed_borrowed = borrowed;
        Ok(Arc::new(ChrootTarget::setup(&mnt, sandbox)?))
    })?;
    b.target = Some(target);
    if let Some(c) = &b.cache {
        c.set_source(cache::Source {
            image: b.work().image(),
            mountpoint: b.work().mountpoint(),
        });
    }
    Ok(())
}

/// Runs the recipe against the sandbox; on failure the sandbox is torn
/// down before the error returns.
fn recipe(b: &mut Build) -> Result<()> {
    let target = b.target();
    let opts = b.opts;
    let session = b.cache.clone();
    let recipe_stage = || {
        let run = host::run_recipe_with(
            &opts.recipe,
            &opts.inputs,
            target.clone(),
            Arc::new(|loc, msg| pgimg_stdlib::stderr_line!("{loc}: {msg}")),
            &opts.limits,
            session.as_ref().map(cache::as_steps),
        );
        let run = run.into_journal();
        let report = match (&run, &session) {
            (Ok(journal), Some(s)) => Some(s.finish(target.as_ref(), journal)),
            _ => None,
        };
        Ok((run, report))
    };
    let (run, report) = b
        .stages
        .run_judged("recipe", recipe_stage, |(run, _)| run.is_ok())?;
    b.cache_report = report;
    match run {
        Ok(journal) => {
            b.journal = Some(journal);
            Ok(())
        }
        Err(msg) => {
            if let Err(t) = target.teardown() {
                log(&format!("warning: tearing down the sandbox: {t}"));
            }
            let note = b.boot_mounts.as_ref().and_then(|m| m.explain(&msg.0));
            Err(RecipeFailed(match note {
                Some(note) => format!("{}\n{note}", msg.0),
                None => msg.0,
            })
            .into())
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
    let boot_mounts = b.boot_mounts.take().expect("mounted");
    let root_mount = b.root_mount.take().expect("mounted");
    let lo = b.loop_dev.take().expect("attached");
    let mnt = b.work().mountpoint();
    let image = b.work().image();
    let format = b.opts.format;
    b.prehash = b.stages.run("finalize", move || {
        // Nothing writes under /boot after the recipe; and finalize refuses
        // to delete while a mount it does not own is in the root.
        boot_mounts.close()?;
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
        // The image is final: its hash runs beside the check and the detach.
        let prehash = matches!(format, Format::Raw).then(|| output::Prehash::start(image));
        ext4::check_clean(lo.path())?;
        lo.close()?;
        Ok(prehash)
    })?;
    Ok(())
}

/// Writes the output and its sidecars; returns the manifest.
fn output(b: &mut Build) -> Result<Manifest> {
    let mut m = b.manifest()?;
    let opts = b.opts;
    let work = b.work.take().expect("acquired");
    let prehash = b.prehash.take();
    let record = b.stages.run("output", || {
        output::write_output(&work, &opts.output, opts.format, opts.compress, prehash)
    })?;
    m.stages = b.stages.done.clone();
    m.output = Some(record);
    let json = serde_json::to_string_pretty(&m)?;
    let manifest_path = output::sidecar(&opts.output, "manifest.json");
    output::write_new(&manifest_path, (json + "\n").as_bytes())?;
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
