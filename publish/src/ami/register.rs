//! EC2 image steps: find by name, register a snapshot, tag, copy across regions, wait, share.

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, ImageState,
    ImdsSupportValues, LaunchPermission, LaunchPermissionModifications, OperationType,
    PermissionGroup, SnapshotAttributeName, Tag, TpmSupportValues, VolumeType,
};
use aws_sdk_ec2::Client;

use super::{Arch, BootMode, Ctx, Error, ImdsSupport, RegionImage, TpmSupport};
use crate::error::CommonError;
use crate::progress::{Progress, Unit};
use crate::rt::{Interrupt, Wait};

/// The root device every AMI gets, as the old workflow registered them.
pub(super) const ROOT_DEVICE: &str = "/dev/sda1";

/// This account's AMI named `name` in the client's region, if any. One that
/// failed (or is otherwise unusable) is an error: it must be deregistered by
/// hand before the name can be used again.
pub(super) async fn find_by_name(
    ec2: &Client,
    region: &str,
    name: &str,
) -> Result<Option<RegionImage>, Error> {
    let found = ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(|e| Error::api("DescribeImages", format!("name {name:?} in {region}"), &e))?;
    let Some(image) = found.images().first() else {
        return Ok(None);
    };
    let ami = image.image_id().unwrap_or_default().to_string();
    match image.state() {
        Some(ImageState::Available) | Some(ImageState::Pending) | None => Ok(Some(RegionImage {
            snapshot: root_snapshot(image),
            ami,
            existing: true,
        })),
        Some(state) => Err(Error::ImageFailed {
            ami,
            region: region.to_string(),
            state: state.as_str().to_string(),
            reason: format!(
                "an AMI named {name:?} exists but is unusable ({}); deregister it first",
                image
                    .state_reason()
                    .and_then(|r| r.message())
                    .unwrap_or("no reason given")
            ),
        }),
    }
}

fn root_snapshot(image: &aws_sdk_ec2::types::Image) -> Option<String> {
    let root = image.root_device_name().unwrap_or(ROOT_DEVICE);
    image
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(root))
        .or_else(|| image.block_device_mappings().first())
        .and_then(|m| m.ebs())
        .and_then(|e| e.snapshot_id())
        .map(str::to_string)
}

/// RegisterImage: HVM, ENA, root `/dev/sda1` on a gp3 volume of the image's
/// size (whole GiB) from `snapshot`; then the tags.
pub(super) async fn register(ctx: &Ctx<'_>, ec2: &Client, snapshot: &str) -> Result<String, Error> {
    let opts = ctx.opts;
    let registered = ec2
        .register_image()
        .name(&opts.name)
        .description(ctx.description())
        .architecture(match opts.arch {
            Arch::X86_64 => ArchitectureValues::X8664,
            Arch::Arm64 => ArchitectureValues::Arm64,
        })
        .virtualization_type("hvm")
        .ena_support(true)
        .set_boot_mode(opts.boot_mode.map(|m| match m {
            BootMode::LegacyBios => BootModeValues::LegacyBios,
            BootMode::Uefi => BootModeValues::Uefi,
            BootMode::UefiPreferred => BootModeValues::UefiPreferred,
        }))
        .set_imds_support(
            opts.imds_support
                .map(|ImdsSupport::V2_0| ImdsSupportValues::V20),
        )
        .set_tpm_support(
            opts.tpm_support
                .map(|TpmSupport::V2_0| TpmSupportValues::V20),
        )
        .root_device_name(ROOT_DEVICE)
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(ROOT_DEVICE)
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(snapshot)
                        .volume_size(ctx.volume_gib())
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            Error::api(
                "RegisterImage",
                format!("{:?} from {snapshot}", opts.name),
                &e,
            )
        })?;
    let ami = registered.image_id().unwrap_or_default().to_string();
    if ami.is_empty() {
        return Err(Error::api_message(
            "RegisterImage",
            opts.name.clone(),
            "the response has no image id".into(),
        ));
    }
    tag(ctx, ec2, &[ami.as_str(), snapshot]).await?;
    Ok(ami)
}

/// CreateTags with `Name`, `Source`, `Architecture` on `resources`.
pub(super) async fn tag(ctx: &Ctx<'_>, ec2: &Client, resources: &[&str]) -> Result<(), Error> {
    let tags = ctx
        .tags()
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    ec2.create_tags()
        .set_resources(Some(resources.iter().map(|r| r.to_string()).collect()))
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| Error::api("CreateTags", resources.join(","), &e))?;
    Ok(())
}

/// CopyImage of `source_ami` (in the home region) into the client's region,
/// tagged alike, encrypted with the region's KMS key when one is set.
/// `token` makes a repeated request return the first copy.
pub(super) async fn copy(
    ctx: &Ctx<'_>,
    dest: &Client,
    region: &str,
    source_ami: &str,
    token: &str,
) -> Result<String, Error> {
    let opts = ctx.opts;
    let key = opts.kms_key_for(region);
    let copied = dest
        .copy_image()
        .source_image_id(source_ami)
        .source_region(&opts.region)
        .name(&opts.name)
        .description(ctx.description())
        .client_token(token)
        .set_encrypted(key.map(|_| true))
        .set_kms_key_id(key.map(str::to_string))
        .send()
        .await
        .map_err(|e| Error::api("CopyImage", format!("{source_ami} to {region}"), &e))?;
    let ami = copied.image_id().unwrap_or_default().to_string();
    if ami.is_empty() {
        return Err(Error::api_message(
            "CopyImage",
            format!("{source_ami} to {region}"),
            "the response has no image id".into(),
        ));
    }
    tag(ctx, dest, &[ami.as_str()]).await?;
    Ok(ami)
}

/// Polls every AMI until all are available (bounded by
/// `available_timeout_secs`); returns each one's root snapshot.
pub(super) async fn wait_available(
    ctx: &Ctx<'_>,
    images: &[(String, Client, RegionImage)],
    progress: &dyn Progress,
    mut interrupt: Interrupt,
) -> Result<Vec<Option<String>>, Error> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let wait = Wait::new(ctx.poll(), ctx.available_timeout());
    let mut snapshots: Vec<Option<Option<String>>> = vec![None; images.len()];
    progress.start("waiting for AMIs", images.len() as u64, Unit::Percent);
    loop {
        for (i, (region, ec2, img)) in images.iter().enumerate() {
            if snapshots[i].is_some() {
                continue;
            }
            let described = ec2
                .describe_images()
                .image_ids(&img.ami)
                .send()
                .await
                .map_err(|e| {
                    Error::api("DescribeImages", format!("{} in {region}", img.ami), &e)
                })?;
            let Some(image) = described.images().first() else {
                // Freshly copied AMIs can take a moment to be listed.
                continue;
            };
            match image.state() {
                Some(ImageState::Available) => snapshots[i] = Some(root_snapshot(image)),
                Some(ImageState::Pending) | None => {}
                Some(state) => {
                    return Err(Error::ImageFailed {
                        ami: img.ami.clone(),
                        region: region.clone(),
                        state: state.as_str().to_string(),
                        reason: image
                            .state_reason()
                            .and_then(|r| r.message())
                            .unwrap_or("no reason given")
                            .to_string(),
                    })
                }
            }
        }
        let done = snapshots.iter().filter(|s| s.is_some()).count();
        progress.set((done * 100 / images.len().max(1)) as u64);
        if done == images.len() {
            progress.finish();
            return Ok(snapshots.into_iter().map(Option::flatten).collect());
        }
        let waiting = || {
            let waiting: Vec<String> = images
                .iter()
                .zip(&snapshots)
                .filter(|(_, s)| s.is_none())
                .map(|((r, _, img), _)| format!("{} in {r}", img.ami))
                .collect();
            format!("AMIs to become available: {}", waiting.join(", "))
        };
        wait.pause_or_interrupt(waiting, &mut interrupt).await?;
    }
}

/// Sharing and deprecation of one region's available AMI: launch permission
/// for everyone (`--public`), accounts and organizations; create-volume
/// permission on its snapshot for the accounts (so they can copy it);
/// EnableImageDeprecation. Each call is idempotent, so a re-run repeats them.
pub(super) async fn finish(
    ctx: &Ctx<'_>,
    ec2: &Client,
    region: &str,
    img: &RegionImage,
) -> Result<(), Error> {
    let opts = ctx.opts;
    let ami = img.ami.as_str();
    let mut grants = Vec::new();
    if opts.public {
        grants.push(
            LaunchPermission::builder()
                .group(PermissionGroup::All)
                .build(),
        );
    }
    for account in &opts.share_with {
        grants.push(LaunchPermission::builder().user_id(account).build());
    }
    for arn in &opts.share_with_org {
        let grant = if arn.contains(":ou/") {
            LaunchPermission::builder().organizational_unit_arn(arn)
        } else {
            LaunchPermission::builder().organization_arn(arn)
        };
        grants.push(grant.build());
    }
    if !grants.is_empty() {
        ec2.modify_image_attribute()
            .image_id(ami)
            .launch_permission(
                LaunchPermissionModifications::builder()
                    .set_add(Some(grants))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                Error::api(
                    "ModifyImageAttribute",
                    format!("{ami} in {region} (launch permission)"),
                    &e,
                )
            })?;
    }
    if let (false, Some(snapshot)) = (opts.share_with.is_empty(), &img.snapshot) {
        // The flat form (OperationType + UserIds) is the one every EC2
        // implementation reads, the AWS CLI's `--user-ids` included.
        ec2.modify_snapshot_attribute()
            .snapshot_id(snapshot)
            .attribute(SnapshotAttributeName::CreateVolumePermission)
            .operation_type(OperationType::Add)
            .set_user_ids(Some(opts.share_with.clone()))
            .send()
            .await
            .map_err(|e| {
                Error::api(
                    "ModifySnapshotAttribute",
                    format!("{snapshot} in {region} (create-volume permission)"),
                    &e,
                )
            })?;
    }
    if let Some(at) = &opts.deprecate_at {
        let at =
            aws_smithy_types::DateTime::from_str(at, aws_smithy_types::date_time::Format::DateTime)
                .map_err(|e| Error::invalid(format!("--deprecate-at {at:?}: {e}")))?;
        ec2.enable_image_deprecation()
            .image_id(ami)
            .deprecate_at(at)
            .send()
            .await
            .map_err(|e| Error::api("EnableImageDeprecation", format!("{ami} in {region}"), &e))?;
    }
    Ok(())
}

/// Best effort; the error text is for a message, not for control flow.
pub(super) async fn delete_snapshot(ec2: &Client, snapshot: &str) -> Result<(), String> {
    let deleted = ec2.delete_snapshot().snapshot_id(snapshot).send().await;
    crate::retry::best_effort(deleted, format_args!("deleting snapshot {snapshot}"))
}
