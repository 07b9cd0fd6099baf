//! MySQL/MariaDB facts that are not statement analysis: its column types and how each
//! is captured exactly (`types`), the catalog queries and the table they describe
//! (`catalog`), and how each kind of write is captured (`capture`). Never does I/O.
pub mod binary_literals;
pub mod capture;
pub mod catalog;
pub mod reading;
pub mod types;

pub use capture::InsertPlan;
pub use catalog::{Catalog, CatalogRow, MysqlTable};

#[cfg(test)]
mod tests;
