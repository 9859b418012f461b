fn main() {
    let mut bad = 0;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for path in &args {
        let model = compactor_ir::Model::load(path).unwrap();
        if let Err(p) = compactor_ir::verify(&model) {
            bad += 1;
            println!("{path}: {p}");
        }
        if args.len() == 1 {
            print!("{}", compactor_ir::model_to_text(&model));
        }
    }
    println!("{bad} with problems of {}", args.len());
}
