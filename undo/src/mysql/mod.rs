//! MySQL/MariaDB facts that are not statement analysis: its column types and how each
//! is captured exactly (`types`).
pub mod types;
