//! Printing helpers shared by the commands.

/// True when the error is a write to a closed pipe (`compactor inspect m.onnx | head`):
/// the reader is gone and there is nothing left to report.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let broken = Some(std::io::ErrorKind::BrokenPipe);
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().map(|io| io.kind()) == broken || c.downcast_ref::<serde_json::Error>().and_then(|j| j.io_error_kind()) == broken)
}

/// `1.5 KiB`, `86.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `850 ms`, `2.4 s`.
pub fn duration(seconds: f64) -> String {
    if seconds < 1.0 { format!("{:.0} ms", seconds * 1e3) } else { format!("{seconds:.1} s") }
}

/// `22.7M`, `1.2K`, `512`.
pub fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_units() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(90_359_539), "86.2 MiB");
        assert_eq!(super::count(22_713_216), "22.7M");
    }
}
