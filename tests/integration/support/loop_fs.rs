//! A small ext4 filesystem of its own for a test: an image file in a temp directory,
//! loop-mounted, unmounted on drop. Needs root (or CAP_SYS_ADMIN) and loop devices; where
//! they are missing, `LoopFs::mount` says why and the caller skips loudly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set to 1 to make a test that cannot mount fail instead of skipping (release checks).
pub const REQUIRE_LOOP_MOUNT_ENV: &str = "CAIRN_REQUIRE_LOOP_MOUNT";

/// A mounted loop filesystem.
pub struct LoopFs {
    mount_point: PathBuf,
    _temp_dir: tempfile::TempDir,
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl LoopFs {
    /// Makes an ext4 filesystem of `size_bytes` (no blocks reserved for root, so it fills
    /// for everyone alike) and mounts it.
    pub fn mount(size_bytes: u64) -> Result<LoopFs, String> {
        let temp_dir = tempfile::tempdir().map_err(|error| format!("temp dir: {error}"))?;
        let image = temp_dir.path().join("fs.img");
        let mount_point = temp_dir.path().join("mnt");
        std::fs::create_dir(&mount_point).map_err(|error| format!("mkdir: {error}"))?;
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(size_bytes))
            .map_err(|error| format!("image: {error}"))?;
        run(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-F".as_ref(),
                "-m".as_ref(),
                "0".as_ref(),
                image.as_ref(),
            ],
        )?;
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_ref(),
                mount_point.as_ref(),
            ],
        )?;
        Ok(LoopFs {
            mount_point,
            _temp_dir: temp_dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Fills the filesystem with `name` until a write fails for lack of space (first 1 MiB
    /// writes, then 4 KiB ones), syncs it, and returns its size in bytes.
    pub fn fill(&self, name: &str) -> u64 {
        let path = self.mount_point.join(name);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("filler opens");
        let mut filled_bytes = 0u64;
        for chunk_bytes in [1024 * 1024, 4096] {
            let chunk = vec![0x5Au8; chunk_bytes];
            // Bounded: the filesystem is at most a few hundred MiB.
            for _ in 0..100_000 {
                match file.write_all(&chunk) {
                    Ok(()) => filled_bytes += chunk_bytes as u64,
                    Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(error) => panic!("filling {}: {error}", path.display()),
                }
            }
        }
        file.sync_all().expect("filler syncs");
        filled_bytes
    }

    /// Deletes a filler and makes the freed space visible.
    pub fn free(&self, name: &str) {
        std::fs::remove_file(self.mount_point.join(name)).expect("filler removed");
        std::fs::File::open(&self.mount_point)
            .and_then(|dir| dir.sync_all())
            .expect("mount point syncs");
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if run("umount", &[self.mount_point.as_ref()]).is_err() {
            // Something still holds it (a panicking test's server is killed first, so this
            // is unexpected): detach lazily rather than leak the mount.
            let _ = run("umount", &["-l".as_ref(), self.mount_point.as_ref()]);
        }
    }
}
