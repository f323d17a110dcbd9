//! What a listing of the local tree says (listing stage): [`Local`] for one path, [`Listing`]
//! for a tree, in the controller's [`Entry`] shape so that the two compare
//! ([`crate::sync::listing::diff`]).

use kdev_protocol::Entry;

use crate::sync::unsyncable::Unsyncable;

/// What one local path is, for syncing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// Synced: its entry.
    Entry(Entry),
    /// There, but it cannot be synced (the caller warns once, and treats it as absent).
    Unsyncable(Unsyncable),
    /// Not synced: gone, ignored, reached only through a symlink, or not under the root.
    Absent,
}

/// A listing: the synced entries (sorted by path) and what could not be synced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub unsyncable: Vec<Unsyncable>,
}
