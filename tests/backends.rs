//! The backend suite (tests/support/backends.rs) against S3 servers, moto and SeaweedFS, here
//! (every other backend runs the same body from its own test file); and tasks between different
//! backends, one after the other.

mod support;

use support::backends::{backend_chain, backend_suite, Azurite, FakeGcs, S3Server, SftpServer};
use support::test_dir;

#[test]
fn moto_passes_the_backend_suite() {
    let tmp = test_dir();
    let Some(moto) = S3Server::moto(tmp.path()) else {
        return;
    };
    backend_suite(&moto, tmp.path());
}

#[test]
fn seaweedfs_passes_the_backend_suite() {
    let tmp = test_dir();
    let Some(weed) = S3Server::seaweedfs(tmp.path()) else {
        return;
    };
    backend_suite(&weed, tmp.path());
}

/// Tasks between different backends: fs -> Azure Blob -> S3 -> SFTP -> GCS -> fs.
#[test]
fn tasks_move_between_different_backends() {
    let tmp = test_dir();
    let dir = tmp.path();
    let (Some(azure), Some(s3), Some(sftp), Some(gcs)) = (
        Azurite::start(dir),
        S3Server::moto(dir),
        SftpServer::start(dir),
        FakeGcs::start(dir, "token-of-the-chain"),
    ) else {
        return;
    };
    backend_chain(&[&azure, &s3, &sftp, &gcs], dir);
}
