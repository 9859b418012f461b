//! Round-trips models through the IR and reports whether the bytes are identical.
fn main() {
    let out_dir = std::env::temp_dir().join("compactor-rt");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut same = 0;
    let mut total = 0;
    for path in std::env::args().skip(1) {
        total += 1;
        let t = std::time::Instant::now();
        let model = match compactor_ir::Model::load(&path) {
            Ok(m) => m,
            Err(e) => {
                println!("LOAD FAIL {e}");
                continue;
            }
        };
        let t1 = t.elapsed();
        let out = out_dir.join("out.onnx");
        let opts = compactor_ir::SaveOptions { sync: std::env::var("NOSYNC").is_err(), ..Default::default() };
        if let Err(e) = model.save_with(&out, &opts) {
            println!("SAVE FAIL {path}: {e}");
            continue;
        }
        let t2 = t.elapsed();
        let a = std::fs::read(&path).unwrap();
        let b = std::fs::read(&out).unwrap();
        if a == b {
            same += 1
        } else {
            let i = a.iter().zip(b.iter()).position(|(x, y)| x != y);
            println!("DIFF {path}: len {} vs {}, first diff {:?}", a.len(), b.len(), i);
        }
        if total == 1 {
            println!("{path}: load {t1:?} save {:?}", t2 - t1);
        }
    }
    println!("{same}/{total} byte-identical");
}
