//! The backend suite (tests/support/backends.rs) against S3 servers: moto and SeaweedFS here; every other
//! backend runs the same body from its own test file.

mod support;

use support::backends::{backend_suite, S3Server};
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
