pub mod inspect;
pub mod bench;
