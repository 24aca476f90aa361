//! Live queries ([ext], PROTOCOL.md §4b): `join` of a db channel with a subscription `filter`
//! and/or a `snapshot` of the rows the member may read, consistent with the stream by xid.
//!
//! - [`filter`]: the filter language, parsed once into a canonical [`Filter`], evaluated on
//!   documents.
//! - [`sql`]: the same filter and the permission rule as parameterised SQL.
//! - [`groups`]: members grouped by filter, so one event is evaluated once per distinct filter.
//! - [`eval`]: one event's row versions parsed once and judged per filter group.
//! - [`visibility`]: which transactions a snapshot saw, by xid.
//! - [`hold`]: transactions held for members whose snapshot is being read.
//! - [`snapshot`]: reading a snapshot (pool, bounds, pages) and ending it on the hub.

mod eval;
mod filter;
mod groups;
mod hold;
mod snapshot;
mod sql;
mod visibility;

pub use eval::{EventFilters, Sight};
pub use filter::{Filter, FilterError};
pub use groups::FilterGroups;
pub use hold::{Waiting, WaitingMembers};
pub use snapshot::{PoolConfigError, SnapshotConfig, SnapshotError, SnapshotJoin, Snapshots};
