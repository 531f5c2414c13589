//! `pgimg run`: the pipeline, one named stage after another —
//! acquire → grow → attach → check+resize → mount → recipe → finalize → output.
//!
//! Every resource is a guard declared in acquisition order, so on any error
//! (or SIGINT/SIGTERM, which the sandbox turns into an error) they are released
//! in reverse: the sandbox is torn down, the root file system unmounted, the
//! loop device detached, and the working files removed. A SIGKILL skips all of
//! that, but the private mount namespace takes the mounts with it and the
//! auto-clear loop device then detaches. The base image is only ever read, and
//! nothing appears under the output name until the final rename.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;
use pgimg_stdlib::ctx::{Input, Journal};
use pgimg_stdlib::fetch::HttpFetcher;
use pgimg_stdlib::{Ctx, Target};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::{build_engine, display_path, run_file, Limits};
use crate::image::{self, ext4, inspect::MANIFEST_PATH, WorkImage};
use crate::sandbox::{self, finalize::FinalizeOptions, ChrootTarget, Mount, SandboxOptions};

/// Where the build starts from.
#[derive(Debug, Clone)]
pub enum Base {
    /// A disk image (raw or qcow2) with a GPT and an ext4 root partition.
    Image(PathBuf),
    /// A directory used as the root in place (`--rootfs`); no image is written.
    Rootfs(PathBuf),
}

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
}

/// Everything `pgimg run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub recipe: PathBuf,
    pub base: Base,
    /// Final image size in bytes (grow only).
    pub size: Option<u64>,
    pub output: PathBuf,
    pub format: Format,
    pub compress: bool,
    pub params: BTreeMap<String, String>,
    pub mirrors: BTreeMap<String, String>,
    pub assets: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub limits: Limits,
    /// Refuse inputs missing from (or not matching) the recipe's `pgimg.lock`.
    pub locked: bool,
}

/// One stage and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    pub stage: &'static str,
    pub seconds: f64,
}

/// The base the image was built from.
#[derive(Debug, Clone, Serialize)]
pub struct BaseRecord {
    pub path: String,
    pub sha256: Option<String>,
}

/// `<output>.manifest.json`, also embedded in the image at [`MANIFEST_PATH`].
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub pgimg_version: &'static str,
    pub recipe: String,
    pub params: BTreeMap<String, String>,
    pub mirrors: BTreeMap<String, String>,
    pub base: BaseRecord,
    pub arch: String,
    /// Every input fetched or built, with its pin.
    pub inputs: Vec<Input>,
    pub finalize: FinalizeOptions,
    pub stages: Vec<StageTime>,
    pub output: Option<OutputRecord>,
}

/// The written image.
#[derive(Debug, Clone, Serialize)]
pub struct OutputRecord {
    pub path: String,
    pub format: Format,
    pub sha256: String,
    pub apparent_size: u64,
    pub allocated_size: u64,
}

/// Times stages and logs one line per stage.
#[derive(Default)]
struct Stages {
    done: Vec<StageTime>,
}

impl Stages {
    fn run<T>(&mut self, stage: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if sandbox::interrupt::interrupted() {
            bail!("interrupted before {stage}");
        }
        log(&format!("stage {stage} ..."));
        let start = Instant::now();
        let r = f().with_context(|| format!("stage {stage}"));
        let seconds = start.elapsed().as_secs_f64();
        log(&format!(
            "stage {stage} {} in {seconds:.1} s",
            if r.is_ok() { "done" } else { "failed" }
        ));
        self.done.push(StageTime { stage, seconds });
        r
    }
}

fn log(line: &str) {
    eprintln!("pgimg: {line}");
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The folder beside the output holding the working image and the mountpoint;
/// removed on drop. Only the files pgimg put there are removed, and the
/// mountpoint with `rmdir` (never recursively: if an unmount failed, a
/// recursive delete would walk into the image).
struct WorkDir {
    dir: PathBuf,
}

impl WorkDir {
    fn create(output: &Path) -> Result<WorkDir> {
        let parent = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = output
            .file_name()
            .context("--output needs a file name")?
            .to_string_lossy();
        let dir = parent.join(format!(".{name}.pgimg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir { dir })
    }
    fn image(&self) -> PathBuf {
        self.dir.join("work.raw")
    }
    fn mountpoint(&self) -> PathBuf {
        self.dir.join("root")
    }
    fn converted(&self) -> PathBuf {
        self.dir.join("out.qcow2")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        for f in [self.image(), self.converted()] {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir(self.mountpoint());
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log(&format!("warning: leaving {}: {e}", self.dir.display()));
            }
        }
    }
}

/// The journal's `finalize` setting (from the recipe's `finalize(#{...})`).
fn finalize_options(journal: &Journal) -> Result<FinalizeOptions> {
    match journal.settings.get("finalize") {
        None => Ok(FinalizeOptions::default()),
        Some(v) => serde_json::from_value(v.clone()).context("finalize options"),
    }
}

/// What running the recipe produced.
struct RecipeRun {
    journal: Journal,
}

/// Runs the recipe against a prepared target.
fn run_recipe(opts: &RunOptions, target: Arc<dyn Target>) -> Result<RecipeRun> {
    let journal = Arc::new(Mutex::new(Journal::default()));
    let ctx = Ctx::new(target)
        .with_params(opts.params.clone())
        .with_mirrors(opts.mirrors.clone())
        .with_asset_dirs(crate::testing::asset_dirs(&opts.recipe, &opts.assets))
        .with_log(Arc::new(|loc, msg| eprintln!("{loc}: {msg}")));
    let mut ctx = Ctx {
        journal: journal.clone(),
        ..ctx
    };
    if opts.locked {
        ctx = ctx.with_lock(crate::lock::load_for(&opts.recipe).map_err(anyhow::Error::msg)?);
    }
    let engine = build_engine(&ctx, &opts.limits);
    let result =
        run_file(&engine, &opts.recipe).and_then(|()| crate::cli::check_mirrors_used(&ctx));
    drop(engine);
    drop(ctx);
    let journal = std::mem::take(&mut *journal.lock().unwrap());
    match result {
        Ok(()) => Ok(RecipeRun { journal }),
        Err(msg) => Err(RecipeFailed(msg).into()),
    }
}

/// The recipe itself failed (its message already names file:line:col).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecipeFailed(pub String);

fn sandbox_options(opts: &RunOptions) -> Result<SandboxOptions> {
    let fetcher = HttpFetcher::new(opts.cache_dir.join("downloads"))
        .context("setting up the downloader")?
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_interrupt(&sandbox::interrupt::INTERRUPTED);
    let mut s = SandboxOptions::new(Box::new(fetcher));
    s.cache_dir = Some(opts.cache_dir.clone());
    Ok(s)
}

fn manifest(
    opts: &RunOptions,
    base: BaseRecord,
    journal: &Journal,
    stages: &Stages,
) -> Result<Manifest> {
    Ok(Manifest {
        pgimg_version: env!("CARGO_PKG_VERSION"),
        recipe: display_path(&opts.recipe),
        params: opts.params.clone(),
        mirrors: opts.mirrors.clone(),
        base,
        arch: pgimg_stdlib::target::host_arch()
            .map_err(anyhow::Error::msg)?
            .to_string(),
        inputs: journal.inputs.clone(),
        finalize: finalize_options(journal)?,
        stages: stages.done.clone(),
        output: None,
    })
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// `pgimg run` on a directory: the recipe and finalize, in place.
pub fn run_rootfs(opts: &RunOptions, dir: &Path) -> Result<Manifest> {
    let mut stages = Stages::default();
    let target = stages.run("mount", || {
        Ok(Arc::new(ChrootTarget::setup(dir, sandbox_options(opts)?)?))
    })?;
    let recipe = stages.run("recipe", || run_recipe(opts, target.clone()));
    let recipe = match recipe {
        Ok(r) => r,
        Err(e) => {
            target.teardown().context("tearing down the sandbox")?;
            return Err(e);
        }
    };
    let base = BaseRecord {
        path: dir.display().to_string(),
        sha256: None,
    };
    let mut m = manifest(opts, base, &recipe.journal, &stages)?;
    stages.run("finalize", || {
        let fin = finalize_options(&recipe.journal)?;
        let report = sandbox::finalize(&target, &fin);
        let down = target.teardown();
        log(&format!("finalize: {}", report?));
        down?;
        Ok(())
    })?;
    m.stages = stages.done;
    Ok(m)
}

/// `pgimg run` on an image: the whole pipeline.
pub fn run_image(opts: &RunOptions, base: &Path) -> Result<Manifest> {
    if opts.output.exists() {
        bail!(
            "{} exists; remove it or choose another --output",
            opts.output.display()
        );
    }
    let mut stages = Stages::default();
    let work = WorkDir::create(&opts.output)?;
    let base_sha = stages.run("acquire", || {
        let sha =
            sha256_file(base).with_context(|| format!("reading the base {}", base.display()))?;
        image::copy_base(base, &work.image())?;
        Ok(sha)
    })?;
    if let Some(size) = opts.size {
        stages.run("grow", || {
            let outcome = image::grow(&work.image(), size)?;
            log(&format!("grow: {outcome:?}"));
            Ok(())
        })?;
    }
    let (img, lo) = stages.run("attach", || {
        let img = WorkImage::open(&work.image())?;
        let lo = img.attach_root()?;
        log(&format!(
            "root partition {} ({} bytes at offset {}) on {}",
            img.root().number,
            img.root().size(),
            img.root().offset(),
            lo.path().display()
        ));
        Ok((img, lo))
    })?;
    drop(img);
    stages.run("check+resize", || {
        ext4::check_and_resize(lo.path())?;
        Ok(())
    })?;
    let mnt = work.mountpoint();
    let (root_mount, target) = stages.run("mount", || {
        std::fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let m = Mount::host(
            Some(lo.path()),
            &mnt,
            Some("ext4"),
            MsFlags::empty(),
            None,
            "root file system",
        )?;
        let t = ChrootTarget::setup(&mnt, sandbox_options(opts)?)?;
        Ok((m, Arc::new(t)))
    })?;
    let recipe = stages.run("recipe", || run_recipe(opts, target.clone()));
    let recipe = match recipe {
        Ok(r) => r,
        Err(e) => {
            if let Err(t) = target.teardown() {
                log(&format!("warning: tearing down the sandbox: {t}"));
            }
            return Err(e);
        }
    };
    let base_record = BaseRecord {
        path: base.display().to_string(),
        sha256: Some(base_sha),
    };
    let mut m = manifest(opts, base_record, &recipe.journal, &stages)?;
    let embedded = serde_json::to_vec_pretty(&m)?;
    let journal = &recipe.journal;
    let (lo, root_mount, mnt) = (lo, root_mount, &mnt);
    stages.run("finalize", move || {
        let fin = finalize_options(journal)?;
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
        let trimmed = ext4::fstrim(mnt)?;
        log(&format!("fstrim returned {trimmed} bytes as holes"));
        root_mount.close()?;
        ext4::check_clean(lo.path())?;
        lo.close()?;
        Ok(())
    })?;
    let out = stages.run("output", || write_output(opts, &work))?;
    m.stages = stages.done;
    m.output = Some(out);
    let json = serde_json::to_string_pretty(&m)?;
    let manifest_path = sidecar(&opts.output, "manifest.json");
    std::fs::write(&manifest_path, json + "\n")
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    for s in &m.stages {
        log(&format!("  {:<13} {:>7.1} s", s.stage, s.seconds));
    }
    Ok(m)
}

fn sidecar(output: &Path, suffix: &str) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

/// Converts (when asked), hashes, writes the `.sha256` sidecar, then renames
/// into place — the rename is the last step, so a failure leaves nothing
/// under the output name.
fn write_output(opts: &RunOptions, work: &WorkDir) -> Result<OutputRecord> {
    let produced = match opts.format {
        Format::Raw => work.image(),
        Format::Qcow2 => {
            image::convert::to_qcow2(&work.image(), &work.converted(), opts.compress)?;
            work.converted()
        }
    };
    let sha = sha256_file(&produced)?;
    let name = opts
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hashing a large image takes seconds; a SIGINT/SIGTERM meanwhile must
    // still stop the build before anything appears under the output name.
    if sandbox::interrupt::interrupted() {
        bail!(
            "interrupted before the image was renamed to {}",
            opts.output.display()
        );
    }
    let sums = sidecar(&opts.output, "sha256");
    std::fs::write(&sums, format!("{sha}  {name}\n"))
        .with_context(|| format!("writing {}", sums.display()))?;
    if let Err(e) = std::fs::rename(&produced, &opts.output) {
        let _ = std::fs::remove_file(&sums);
        return Err(e).with_context(|| format!("renaming the image to {}", opts.output.display()));
    }
    let record = OutputRecord {
        path: opts.output.display().to_string(),
        format: opts.format,
        sha256: sha,
        apparent_size: std::fs::metadata(&opts.output)?.len(),
        allocated_size: allocated(&opts.output),
    };
    log(&format!(
        "wrote {} ({}, {} apparent, {} allocated)",
        record.path,
        match record.format {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        },
        human(record.apparent_size),
        human(record.allocated_size)
    ));
    Ok(record)
}

/// Bytes for people.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Parses sizes like `8G`, `512M`, `4096` (bytes), `1.5G`; binary units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_uppercase();
            let m: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("`{s}`: unknown unit (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 8G"))?;
    if v <= 0.0 {
        return Err(format!("`{s}`: size must be positive"));
    }
    Ok((v * mult as f64) as u64)
}

/// `pgimg shell IMAGE [-- CMD...]`: the image's root mounted as for a build
/// (in place: changes are written to IMAGE), an interactive shell or the
/// given command inside, everything torn down afterwards. Returns the exit code.
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
        root_mount.close()?;
        Ok(code?)
    })();
    let _ = std::fs::remove_dir(&mnt_path);
    lo.close()?;
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, want) in [
            ("8G", Ok(8u64 << 30)),
            ("512M", Ok(512 << 20)),
            ("4096", Ok(4096)),
            ("1.5G", Ok(3 << 29)),
            ("2GiB", Ok(2 << 30)),
            ("10X", Err(())),
            ("-1G", Err(())),
            ("G", Err(())),
        ] {
            assert_eq!(parse_size(s).map_err(|_| ()), want, "{s}");
        }
    }
}
