pub mod bench_runtime;
pub mod compare;
pub mod inspect;
pub mod run;
