//! The checks the fuzz targets run (`checks`), kept in one file that the
//! stable regression test (`tests/fuzz_regressions.rs`) includes too.

pub mod checks;
