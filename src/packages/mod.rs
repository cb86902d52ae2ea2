//! FHIR package cache: install packages (from the registry or a local `.tgz`), list
//! them, and load their conformance resources through an index so that start-up
//! reads one small file per package instead of every resource.
//!
//! Architecture invariant: packages know nothing of HTTP serving or storage; the
//! only network use is the registry download in [`cache::PackageCache::install`].

mod cache;
mod index;

pub use cache::{PackageCache, PackageError, PackageRef};
pub use index::{EntryId, IndexEntry, PackageSet};
