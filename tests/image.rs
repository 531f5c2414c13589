//! System tests of `pgimg::image`: GPT grow checked against sgdisk, the ext
//! superblock against dumpe2fs, and, as root, the whole image path on the
//! Debian fixture (work copy, grow 2→4 GiB, loop attach by offset,
//! e2fsck + resize2fs, detach, inspect, qcow2 round trip).

#[path = "support/fixture.rs"]
mod fixture;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use pgimg::image::{
    self, convert, ext4, gpt, inspect, loopdev, rootfs, workcopy, Format, GrowOutcome, ImageError,
    Superblock, WorkImage,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{argv:?} failed: {}\n{text}",
        out.status
    );
    text
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Partition 1 of `img`'s table: the root in every image here.
fn root_partition(img: &Path) -> gpt::Partition {
    gpt::read(&mut File::open(img).unwrap())
        .unwrap()
        .partition(1)
        .unwrap()
}

/// An image laid out like Ubuntu's cloud image (p14 BIOS boot, p15 EFI,
/// then p1 ext4 to the end), made with sgdisk and mke2fs; no root needed.
fn synthetic_image(dir: &Path, size: u64) -> PathBuf {
    let img = dir.join("synthetic.raw");
    File::create(&img).unwrap().set_len(size).unwrap();
    run(&[
        "sgdisk",
        "--clear",
        "-n",
        "14:2048:10239",
        "-t",
        "14:EF02",
        "-n",
        "15:10240:227327",
        "-t",
        "15:EF00",
        "-n",
        "1:227328:0",
        "-t",
        "1:8300",
        path_str(&img),
    ]);
    ext4_partition(&img, 1, &["-b", "4096", "-L", "synthetic"]);
    img
}

/// A `Name: value` line of `dumpe2fs -h`.
fn dumpe2fs_field(dump: &str, name: &str) -> String {
    dump.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{name} missing in dumpe2fs output:\n{dump}"))
}

fn copy_of(src: &Path, dst: &Path) -> PathBuf {
    workcopy::copy(src, dst).unwrap();
    dst.to_path_buf()
}

fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Our grow must leave the same partition table as sgdisk moving the
/// backup (`-e`) and recreating p1 at the same start with end `0`.
#[test]
fn gpt_grow_is_byte_identical_to_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    let img = synthetic_image(dir.path(), 256 * MIB);
    let ours = copy_of(&img, &dir.path().join("ours.raw"));
    let theirs = copy_of(&img, &dir.path().join("theirs.raw"));
    let guid = root_partition(&img).unique_guid.to_string();

    let outcome = image::grow(&ours, 512 * MIB).unwrap();
    // The build log's line names what moved, not a Rust structure.
    let line = outcome.to_string();
    assert!(
        line.starts_with("partition 1 now ends at sector "),
        "{line}"
    );
    assert!(
        line.contains("backup GPT header moved from sector "),
        "{line}"
    );
    let GrowOutcome::Grown(report) = outcome else {
        panic!("not grown: {outcome:?}")
    };
    assert_eq!(report.partition, 1);

    File::options()
        .write(true)
        .open(&theirs)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();
    run(&["sgdisk", "-e", path_str(&theirs)]);
    run(&[
        "sgdisk",
        "-d",
        "1",
        "-n",
        "1:227328:0",
        "-t",
        "1:8300",
        "-u",
        &format!("1:{guid}"),
        path_str(&theirs),
    ]);

    let sectors = 512 * MIB / 512;
    for (what, offset, len) in [
        ("MBR, primary header and array", 0, 34 * 512),
        ("backup array and header", (sectors - 33) * 512, 33 * 512),
    ] {
        let a = read_range(&ours, offset, len);
        let b = read_range(&theirs, offset, len);
        let differing: Vec<u64> = (0..len)
            .filter(|&i| a[i as usize] != b[i as usize])
            .map(|i| offset + i)
            .collect();
        assert!(
            differing.is_empty(),
            "{what}: bytes differ at {differing:?}"
        );
    }
    let verify = run(&["sgdisk", "-v", path_str(&ours)]);
    assert!(verify.contains("No problems found"), "{verify}");
}

#[test]
fn grow_refuses_shrink_and_same_size_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let img = synthetic_image(dir.path(), 256 * MIB);
    let before = std::fs::read(&img).unwrap();

    let err = image::grow(&img, 128 * MIB).unwrap_err();
    assert!(matches!(err, ImageError::Shrink { .. }), "{err}");
    assert!(err.to_string().contains("final size"), "{err}");
    assert_eq!(
        image::grow(&img, 256 * MIB).unwrap(),
        GrowOutcome::Unchanged
    );
    let err = image::grow(&img, 256 * MIB + 100).unwrap_err();
    assert!(matches!(err, ImageError::Unaligned { .. }), "{err}");
    assert!(
        std::fs::read(&img).unwrap() == before,
        "refusals changed the image"
    );
}

/// bottlerocket-os/bottlerocket#333: a file extended with a plain `truncate`
/// keeps its backup header in the middle; grow at the file's own size (no
/// `--size`, or `--size` equal to it) moves it to the end and grows the root.
#[test]
fn grow_at_the_files_size_moves_a_backup_header_left_short_and_grows_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let img = synthetic_image(dir.path(), 256 * MIB);
    File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(384 * MIB)
        .unwrap();
    let before = gpt::read(&mut File::open(&img).unwrap()).unwrap();
    assert_eq!(before.backup_lba(), 256 * MIB / 512 - 1);

    let GrowOutcome::Grown(report) = image::grow(&img, 384 * MIB).unwrap() else {
        panic!("a table that stops at 256 MiB of a 384 MiB file was left as it was");
    };
    assert_eq!(report.new_backup_lba, 384 * MIB / 512 - 1);
    let after = gpt::read(&mut File::open(&img).unwrap()).unwrap();
    assert_eq!(after.backup_lba(), 384 * MIB / 512 - 1);
    assert_eq!(
        after.partition(1).unwrap().last_lba,
        after.last_usable_lba(),
        "the root partition reaches the last usable sector"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 384 * MIB);
    let verify = run(&["sgdisk", "-v", path_str(&img)]);
    assert!(verify.contains("No problems found"), "{verify}");
    assert_eq!(
        image::grow(&img, 384 * MIB).unwrap(),
        GrowOutcome::Unchanged,
        "a second grow finds nothing to do"
    );
}

/// Writes an ext4 file system labelled `label`, holding the files of `tree`,
/// into partition `number` of `img`.
fn ext4_partition_from(img: &Path, number: u32, label: &str, tree: &Path) {
    ext4_partition(img, number, &["-L", label, "-d", path_str(tree)]);
}

/// Writes an ext4 file system as large as partition `number` of `img`, made
/// by `mke2fs` with `options`, into that partition.
fn ext4_partition(img: &Path, number: u32, options: &[&str]) {
    let part = gpt::read(&mut File::open(img).unwrap())
        .unwrap()
        .partition(number)
        .unwrap();
    let fs = img.with_extension(format!("p{number}"));
    File::create(&fs).unwrap().set_len(part.size()).unwrap();
    let mut mke2fs = vec!["mke2fs", "-q", "-F", "-t", "ext4"];
    mke2fs.extend_from_slice(options);
    mke2fs.push(path_str(&fs));
    run(&mke2fs);
    run(&[
        "dd",
        &format!("if={}", path_str(&fs)),
        &format!("of={}", path_str(img)),
        "bs=1M",
        &format!("seek={}", part.offset()),
        "oflag=seek_bytes",
        "conv=notrunc,sparse",
        "status=none",
    ]);
    std::fs::remove_file(&fs).unwrap();
}

/// An image with a separate ext4 `/boot` (p1, label `boot`, holding
/// `grub/`) and a root (p2, label `root`) whose `/etc/fstab` is `fstab`.
fn separate_boot_image(dir: &Path, fstab: &str) -> PathBuf {
    let img = dir.join("two.raw");
    File::create(&img).unwrap().set_len(96 * MIB).unwrap();
    run(&[
        "sgdisk",
        "--clear",
        "-n",
        "1:2048:+24M",
        "-t",
        "1:8300",
        "-n",
        "2:0:0",
        "-t",
        "2:8300",
        path_str(&img),
    ]);
    let boot = dir.join("boot-tree");
    std::fs::create_dir_all(boot.join("grub")).unwrap();
    ext4_partition_from(&img, 1, "boot", &boot);
    let root = dir.join("root-tree");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("etc/fstab"), fstab).unwrap();
    ext4_partition_from(&img, 2, "root", &root);
    img
}

const SEPARATE_BOOT_FSTAB: &str =
    "LABEL=root / ext4 defaults 0 1\nLABEL=boot /boot ext4 defaults 0 2\n";

/// A separate ext4 `/boot` beside the root (osbuild#208's layout): the root
/// is the partition whose own fstab mounts it on `/`; without such an entry
/// the image is refused as ambiguous, as before.
#[test]
fn the_root_among_several_ext4_partitions_is_the_one_its_fstab_mounts_on_slash() {
    let dir = tempfile::tempdir().unwrap();
    let img = separate_boot_image(dir.path(), "LABEL=boot /boot ext4 defaults 0 2\n");
    let err = WorkImage::open(&img).unwrap_err();
    assert!(
        err.to_string()
            .contains("several partitions hold an ext4 file system (p1, p2)"),
        "{err}"
    );
    let img = separate_boot_image(dir.path(), SEPARATE_BOOT_FSTAB);
    let work = WorkImage::open(&img).unwrap();
    assert_eq!(work.root().number, 2);
    assert_eq!(work.root_fs().label, "root");
}

/// What the build writes to `/boot` lands on the `/boot` partition, not in
/// the root file system's `/boot` that it hides at boot.
#[test]
fn a_separate_boot_partition_is_mounted_where_the_fstab_puts_it() {
    use nix::mount::MsFlags;
    use pgimg::image::boot_mounts::BootMounts;
    fixture::skip_unless_root!();
    pgimg::sandbox::namespace::private_namespace_for_calling_thread().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = separate_boot_image(dir.path(), SEPARATE_BOOT_FSTAB);
    let work = WorkImage::open(&img).unwrap();
    let lo = work.attach_root().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let root_mount = pgimg::sandbox::Mount::host(
        Some(lo.path()),
        &mnt,
        Some("ext4"),
        MsFlags::empty(),
        None,
        "root",
    )
    .unwrap();
    let root = pgimg_stdlib::ImageRoot::open(&mnt).unwrap();
    let lines = std::cell::RefCell::new(Vec::<String>::new());
    let boot = BootMounts::mount(&img, &root, &|l| lines.borrow_mut().push(l.into())).unwrap();
    assert_eq!(
        lines.borrow().as_slice(),
        ["mounted p1 (ext4) on /boot, as the image's fstab does at boot"]
    );
    assert!(
        mnt.join("boot/grub").is_dir(),
        "the /boot partition's files are there"
    );
    std::fs::write(mnt.join("boot/from-the-build"), "x\n").unwrap();
    boot.close().unwrap();
    drop(root);
    root_mount.close().unwrap();
    lo.close().unwrap();
    let on = |n: u32, cmd: &str| {
        let part = gpt::read(&mut File::open(&img).unwrap())
            .unwrap()
            .partition(n)
            .unwrap();
        run(&[
            "debugfs",
            "-R",
            cmd,
            &format!("{}?offset={}", path_str(&img), part.offset()),
        ])
    };
    // `run` returns stderr too (debugfs's banner) after stdout.
    assert!(on(1, "cat /from-the-build").starts_with("x\n"));
    assert!(
        !on(2, "ls /boot").contains("from-the-build"),
        "the root's hidden /boot is untouched"
    );
    assert!(loopdev::attached_to(&img).is_empty(), "loop devices left");
}

#[test]
fn grow_refuses_an_image_without_gpt() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("plain.ext4");
    File::create(&img).unwrap().set_len(64 * MIB).unwrap();
    run(&["mke2fs", "-q", "-F", "-t", "ext4", path_str(&img)]);
    let err = image::grow(&img, 128 * MIB).unwrap_err();
    assert!(
        matches!(
            &err,
            ImageError::Gpt {
                source: gpt::GptError::NotGpt,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 * MIB);
}

#[test]
fn root_partition_and_superblock_agree_with_dumpe2fs() {
    let dir = tempfile::tempdir().unwrap();
    let img = synthetic_image(dir.path(), 256 * MIB);
    let work = WorkImage::open(&img).unwrap();
    assert_eq!(work.root().number, 1);
    assert_eq!(work.root().first_lba, 227328);
    let sb = work.root_fs();

    // dumpe2fs reads the same file system from a copy of the partition.
    let part = dir.path().join("p1.ext4");
    run(&[
        "dd",
        &format!("if={}", path_str(&img)),
        &format!("of={}", path_str(&part)),
        "bs=1M",
        &format!("skip={}", work.root().offset()),
        "iflag=skip_bytes",
        "conv=sparse",
        "status=none",
    ]);
    let dump = run(&["dumpe2fs", "-h", path_str(&part)]);
    let field = |name: &str| dumpe2fs_field(&dump, name);
    assert_eq!(sb.blocks_count.to_string(), field("Block count"));
    assert_eq!(sb.free_blocks.to_string(), field("Free blocks"));
    assert_eq!(sb.block_size.to_string(), field("Block size"));
    assert_eq!(sb.uuid, field("Filesystem UUID"));
    assert_eq!(sb.label, field("Filesystem volume name"));
    assert_eq!(sb.kind, "ext4");
}

#[test]
fn raw_copy_keeps_holes() {
    let dir = tempfile::tempdir().unwrap();
    let img = synthetic_image(dir.path(), 256 * MIB);
    let copy = dir.path().join("copy.raw");
    let done = image::copy_base(&img, &copy).unwrap();
    assert_eq!(done.format, Format::Raw);
    assert!(done.method.is_some());
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&img).unwrap());
    let allocated = workcopy::allocated_size(&copy).unwrap();
    assert!(
        allocated <= workcopy::allocated_size(&img).unwrap() + MIB,
        "copy allocates {allocated} bytes"
    );
}

struct Timer(Instant, &'static str);

impl Timer {
    fn start(what: &'static str) -> Timer {
        Timer(Instant::now(), what)
    }
    fn stop(self) -> f64 {
        let secs = self.0.elapsed().as_secs_f64();
        eprintln!("[measure] {}: {secs:.2} s", self.1);
        secs
    }
}

/// The image stages end to end on the Debian fixture, with timings.
#[test]
fn fixture_copy_grow_attach_resize_detach() {
    fixture::skip_unless_root!();
    let t = Timer::start("fixture (build or reuse)");
    let base = fixture::base_image();
    t.stop();
    eprintln!(
        "[measure] fixture {}: apparent {} bytes, allocated {} bytes",
        base.display(),
        std::fs::metadata(&base).unwrap().len(),
        workcopy::allocated_size(&base).unwrap()
    );
    let dir = tempfile::tempdir_in(fixture::fixture_dir()).unwrap();
    let work = dir.path().join("work.raw");

    let t = Timer::start("work copy");
    let copied = image::copy_base(&base, &work).unwrap();
    t.stop();
    eprintln!("[measure] work copy method: {:?}", copied.method);
    assert_eq!(copied.format, Format::Raw);

    let t = Timer::start("grow 2 -> 4 GiB (GPT)");
    let GrowOutcome::Grown(report) = image::grow(&work, 4 * GIB).unwrap() else {
        panic!("not grown")
    };
    let grow_secs = t.stop();
    assert_eq!(report.new_backup_lba, 4 * GIB / 512 - 1);
    let wi = WorkImage::open(&work).unwrap();
    assert_eq!(wi.root().number, 1);
    assert_eq!(wi.root().first_lba, 227328);
    assert_eq!(wi.root().last_lba, 4 * GIB / 512 - 34);
    let old_fs_size = wi.root_fs().size();
    assert!(old_fs_size < 2 * GIB);

    let t = Timer::start("attach + e2fsck -fp + resize2fs");
    let guard = wi.attach_root().unwrap();
    assert!(guard.path().to_string_lossy().starts_with("/dev/loop"));
    assert_eq!(
        loopdev::attached_to(&work),
        vec![guard.path().to_path_buf()]
    );
    ext4::check_and_resize(guard.path()).unwrap();
    let resize_secs = t.stop();
    eprintln!(
        "[measure] grow total (GPT + check + resize): {:.2} s",
        grow_secs + resize_secs
    );

    let sb = Superblock::read(&mut File::open(guard.path()).unwrap(), 0)
        .unwrap()
        .expect("superblock on the loop device");
    assert_eq!(
        sb.size(),
        wi.root().size() / 4096 * 4096,
        "fs fills the partition"
    );
    assert!(sb.size() > old_fs_size + GIB + GIB / 2);
    let dump = run(&["dumpe2fs", "-h", path_str(guard.path())]);
    assert_eq!(
        dumpe2fs_field(&dump, "Block count"),
        sb.blocks_count.to_string()
    );
    ext4::check_clean(guard.path()).unwrap();

    let t = Timer::start("detach");
    guard.close().unwrap();
    t.stop();
    assert_eq!(loopdev::attached_to(&work), Vec::<PathBuf>::new());
    let losetup = run(&["losetup", "-j", path_str(&work)]);
    assert!(losetup.trim().is_empty(), "still attached: {losetup}");

    let verify = run(&["sgdisk", "-v", path_str(&work)]);
    assert!(verify.contains("No problems found"), "{verify}");
    // The superblock read straight from the file agrees with the device's.
    assert_eq!(WorkImage::open(&work).unwrap().root_fs().size(), sb.size());

    let report = inspect::inspect(&work).unwrap();
    assert_eq!(report.root, Some(1));
    let numbers: Vec<u32> = report
        .partitions
        .iter()
        .map(|p| p.partition.number)
        .collect();
    assert_eq!(numbers, [1, 14, 15]);
    assert_eq!(report.apparent_size, 4 * GIB);
    assert!(report.allocated_size < GIB, "{}", report.allocated_size);
    assert!(
        matches!(report.manifest, inspect::Manifest::Absent),
        "{:?}",
        report.manifest
    );
    let text = report.to_string();
    eprintln!("{text}");
    for needle in [
        "format      raw (disk 4.00 GiB)",
        "BIOS boot",
        "EFI system",
        "ext4 \"cloudimg-rootfs\"  (root)",
        // grown to the disk's end: 4 GiB less the BIOS boot and ESP partitions
        "root fs     p1: ext4, 3.",
        "manifest    none",
    ] {
        assert!(text.contains(needle), "{needle:?} missing");
    }
    assert!(
        loopdev::attached_to(&work).is_empty(),
        "inspect left a loop device"
    );

    assert_eq!(
        fixture::current_sha256(&base),
        fixture::recorded_sha256(&base),
        "the base image changed"
    );
}

/// A built image's manifest is read by `inspect` with debugfs, no mount.
#[test]
fn inspect_shows_an_embedded_manifest() {
    fixture::skip_unless_root!();
    let (base, dir) = fixture::base_and_scratch();
    let work = dir.path().join("work.raw");
    image::copy_base(&base, &work).unwrap();
    let wi = WorkImage::open(&work).unwrap();

    let manifest = dir.path().join("manifest.json");
    std::fs::write(
        &manifest,
        r#"{"recipe": "test.rhai", "stages": {"grow": 1.5}}"#,
    )
    .unwrap();
    let guard = wi.attach_root().unwrap();
    let commands = dir.path().join("debugfs.cmd");
    std::fs::write(
        &commands,
        format!(
            "mkdir /usr/share/pgimg\nwrite {} /usr/share/pgimg/manifest.json\n",
            manifest.display()
        ),
    )
    .unwrap();
    run(&[
        "debugfs",
        "-w",
        "-f",
        path_str(&commands),
        path_str(guard.path()),
    ]);
    guard.close().unwrap();

    let report = inspect::inspect(&work).unwrap();
    let inspect::Manifest::Present { content } = &report.manifest else {
        panic!("manifest not found: {:?}", report.manifest)
    };
    assert_eq!(content["recipe"], "test.rhai");
    assert_eq!(content["stages"]["grow"], 1.5);
    assert!(report.to_string().contains("\"recipe\": \"test.rhai\""));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["manifest"]["status"], "present");
    assert_eq!(json["partitions"][0]["type_name"], "Linux filesystem");
}

/// qcow2 → (prepare) raw → qcow2 keeps every byte; inspect reads qcow2.
#[test]
fn qcow2_round_trip() {
    fixture::skip_unless_root!();
    let (base, dir) = fixture::base_and_scratch();
    let qcow = dir.path().join("base.qcow2");

    let t = Timer::start("raw -> qcow2 (compressed)");
    convert::to_qcow2(&base, &qcow, true).unwrap();
    t.stop();
    eprintln!(
        "[measure] compressed qcow2: {} bytes",
        std::fs::metadata(&qcow).unwrap().len()
    );
    let t = Timer::start("prepare from qcow2 (convert to raw)");
    let work = image::prepare(&qcow, &dir.path().join("work.raw"), None).unwrap();
    t.stop();
    assert_eq!(work.root().number, 1);
    assert_eq!(
        fixture::current_sha256(work.path()),
        fixture::recorded_sha256(&base)
    );

    let report = inspect::inspect(&qcow).unwrap();
    assert_eq!(report.format, Format::Qcow2);
    assert_eq!(report.virtual_size, 2 * GIB);
    assert_eq!(report.root, Some(1));

    let err = convert::to_qcow2(&base, &qcow, false).unwrap_err();
    assert!(matches!(err, convert::ConvertError::Exists(_)), "{err}");
}

/// Close reports a device something else still holds; auto-clear then
/// detaches it when that holder lets go. Drop alone also detaches.
#[test]
fn loop_guard_close_and_drop() {
    fixture::skip_unless_root!();
    let dir = tempfile::tempdir().unwrap();
    let img = synthetic_image(dir.path(), 256 * MIB);
    let wi = WorkImage::open(&img).unwrap();

    let guard = wi.attach_root_read_only().unwrap();
    let holder = File::open(guard.path()).unwrap();
    let device = guard.path().to_path_buf();
    let err = guard.close().unwrap_err();
    assert!(
        matches!(err, loopdev::LoopError::StillInUse { .. }),
        "{err}"
    );
    assert_eq!(loopdev::attached_to(&img), vec![device]);
    drop(holder);
    wait_detached(&img);

    let guard = wi.attach_root().unwrap();
    assert_eq!(loopdev::attached_to(&img).len(), 1);
    drop(guard);
    wait_detached(&img);

    // A range past the end of the file is refused, not silently cut short.
    let err = loopdev::attach(&img, wi.root().offset(), wi.root().size() + MIB, true).unwrap_err();
    assert!(
        matches!(err, loopdev::LoopError::SizeMismatch { .. }),
        "{err}"
    );
    wait_detached(&img);
}

fn wait_detached(img: &Path) {
    for _ in 0..100 {
        if loopdev::attached_to(img).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("still attached: {:?}", loopdev::attached_to(img));
}

#[test]
fn grow_refuses_a_root_partition_that_is_not_last() {
    let dir = tempfile::tempdir().unwrap();
    let img = synthetic_image(dir.path(), 256 * MIB);
    // Shorten the root entry and put p2 behind it; grow refuses before it
    // looks at the (now too long) file system.
    let guid = root_partition(&img).unique_guid.to_string();
    run(&[
        "sgdisk",
        "-d",
        "1",
        "-n",
        "1:227328:+120M",
        "-t",
        "1:8300",
        "-u",
        &format!("1:{guid}"),
        "-n",
        "2:0:0",
        path_str(&img),
    ]);
    let err = image::grow(&img, 512 * MIB).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::RootNotLast {
                root: 1,
                next: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 256 * MIB);
}

/// Writes `mib` MiB of non-zero data to `path` and syncs it.
fn write_mib(path: &Path, mib: usize) {
    use std::io::Write;
    let mut f = File::create(path).unwrap();
    let chunk = vec![0x5Au8; MIB as usize];
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
}

/// Freed blocks come back as holes in the image file: `fstrim` on the
/// mounted file system (right after the delete: the wrapper must commit the
/// journal first), `e2fsck -E discard` on the unmounted device.
#[test]
fn fstrim_and_discard_punch_holes_in_the_image() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    fixture::skip_unless_root!();
    // This test thread gets its own mount namespace: whatever happens, the
    // mount goes away with the thread.
    pgimg::sandbox::namespace::private_namespace_for_calling_thread().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = synthetic_image(dir.path(), 512 * MIB);
    let wi = WorkImage::open(&img).unwrap();
    let guard = wi.attach_root().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let allocated = || workcopy::allocated_size(&img).unwrap();

    mount(
        Some(guard.path()),
        &mnt,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    write_mib(&mnt.join("a"), 128);
    let full = allocated();
    std::fs::remove_file(mnt.join("a")).unwrap();
    let trimmed = ext4::fstrim(&mnt).unwrap();
    assert!(trimmed >= 128 * MIB, "fstrim reported {trimmed} bytes");
    let after_trim = allocated();
    assert!(after_trim + 100 * MIB < full, "{full} -> {after_trim}");

    write_mib(&mnt.join("b"), 128);
    std::fs::remove_file(mnt.join("b")).unwrap();
    umount2(&mnt, MntFlags::empty()).unwrap();
    let before_discard = allocated();
    assert!(before_discard > after_trim + 100 * MIB);
    ext4::discard_unused(guard.path()).unwrap();
    let after_discard = allocated();
    assert!(
        after_discard + 100 * MIB < before_discard,
        "{before_discard} -> {after_discard}"
    );
    ext4::check_clean(guard.path()).unwrap();
    guard.close().unwrap();
}

/// The error lists the partitions when no ext4 root exists.
#[test]
fn no_root_partition_lists_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("empty.raw");
    File::create(&img).unwrap().set_len(256 * MIB).unwrap();
    run(&[
        "sgdisk",
        "-n",
        "14:2048:10239",
        "-t",
        "14:EF02",
        "-n",
        "1:10240:0",
        "-t",
        "1:8300",
        path_str(&img),
    ]);
    let err = WorkImage::open(&img).unwrap_err();
    assert!(
        matches!(
            &err,
            ImageError::Root {
                source: rootfs::RootError::None { .. },
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("p1 ") && msg.contains("p14") && msg.contains("BIOS boot"),
        "{msg}"
    );
}
