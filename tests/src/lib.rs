//! tandem-tests: the shared harness for the integration suite in `tests/it/`.
#![forbid(unsafe_code)]
