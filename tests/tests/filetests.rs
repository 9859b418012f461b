//! File tests of the passes: each `passes/filetests/<pass>/<case>.ctir` holds an input graph in
//! the text form, a `; run: <pipeline spec>` line, and what the output must be: `; check:`,
//! `; nextln:` and `; not:` lines matched in order, and/or the whole expected output after a
//! `; expected:` line (rewritten by `COMPACTOR_BLESS=1`). The pipeline runs through the same
//! `compactor::Pipeline` the CLI uses (the runtime's constant evaluator; calibration batches
//! with `; calibration: random(N)`), with the verifier after every pass. See docs/text-ir.md.

use compactor_ir::text::{model_to_text, parse};
use compactor_passes::RunOptions;
use compactor_passes::registry::passes;
use compactor_runtime::SessionOptions;
use compactor_tests::repo_root;
use std::path::{Path, PathBuf};

const EXPECTED: &str = "; expected:";

fn filetests_dir() -> PathBuf {
    repo_root().join("passes").join("filetests")
}

fn ctir_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "ctir") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// One directive of a file test's header.
#[derive(Debug, PartialEq)]
enum Directive {
    /// The pattern is on a line at or after the current one.
    Check(String),
    /// The pattern is on the line right after the last match.
    Next(String),
    /// The pattern is not on any line between the last match and the next one.
    Not(String),
}

/// A file test, split into its parts.
struct FileTest {
    spec: String,
    calibration_batches: Option<usize>,
    checks: Vec<Directive>,
    /// The input graph: the text before the `; expected:` line (header comments included).
    input: String,
    expected: Option<String>,
}

fn split(text: &str) -> Result<FileTest, String> {
    let (input, expected) = match text.find(&format!("\n{EXPECTED}\n")) {
        Some(at) => (&text[..at + 1], Some(text[at + EXPECTED.len() + 2..].to_string())),
        None => (text, None),
    };
    let mut spec = None;
    let mut calibration_batches = None;
    let mut checks = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let Some(directive) = line.trim_start().strip_prefix(';') else { continue };
        let directive = directive.trim_start();
        let Some((key, rest)) = directive.split_once(':') else { continue };
        let rest = rest.trim().to_string();
        match key {
            "run" if spec.is_none() => spec = Some(rest),
            "run" => return Err(format!("line {}: a second '; run:' line", i + 1)),
            "calibration" => {
                let n = rest.strip_prefix("random(").and_then(|r| r.strip_suffix(')')).and_then(|n| n.parse().ok());
                calibration_batches = Some(n.ok_or_else(|| format!("line {}: expected '; calibration: random(N)'", i + 1))?);
            }
            "check" => checks.push(Directive::Check(rest)),
            "nextln" => checks.push(Directive::Next(rest)),
            "not" => checks.push(Directive::Not(rest)),
            _ => {}
        }
    }
    let spec = spec.ok_or("no '; run: <pipeline spec>' line")?;
    if checks.is_empty() && expected.is_none() {
        return Err(format!("neither '; check:' lines nor an '{EXPECTED}' section: the test could not fail"));
    }
    Ok(FileTest { spec, calibration_batches, checks, input: input.to_string(), expected })
}

/// A pattern: literal text, with `{{regex}}` parts.
fn pattern(p: &str) -> Result<regex::Regex, String> {
    let mut re = String::new();
    let mut rest = p;
    while let Some(start) = rest.find("{{") {
        re.push_str(&regex::escape(&rest[..start]));
        let end = rest[start..].find("}}").ok_or_else(|| format!("unclosed '{{{{' in '{p}'"))? + start;
        re.push_str(&format!("(?:{})", &rest[start + 2..end]));
        rest = &rest[end + 2..];
    }
    re.push_str(&regex::escape(rest));
    regex::Regex::new(&re).map_err(|e| format!("bad pattern '{p}': {e}"))
}

/// Matches the checks against the output, FileCheck style; the error names the failing check.
fn run_checks(checks: &[Directive], output: &str) -> Result<(), String> {
    let lines: Vec<&str> = output.lines().collect();
    // The next line a `check` may match, and the lines `not` patterns are held against.
    let mut next = 0usize;
    let mut pending_not: Vec<(&str, regex::Regex)> = Vec::new();
    fn not_in(pending: &[(&str, regex::Regex)], range: &[&str]) -> Result<(), String> {
        for (text, re) in pending {
            if let Some(line) = range.iter().find(|l| re.is_match(l)) {
                return Err(format!("'; not: {text}' matched: {line}"));
            }
        }
        Ok(())
    }
    for check in checks {
        match check {
            Directive::Not(p) => pending_not.push((p.as_str(), pattern(p)?)),
            Directive::Check(p) => {
                let re = pattern(p)?;
                let found = (next..lines.len()).find(|&i| re.is_match(lines[i])).ok_or_else(|| format!("'; check: {p}' not found at or after output line {}", next + 1))?;
                not_in(&pending_not, &lines[next..found])?;
                pending_not.clear();
                next = found + 1;
            }
            Directive::Next(p) => {
                let re = pattern(p)?;
                if !pending_not.is_empty() {
                    return Err(format!("'; nextln: {p}' right after a '; not:' line"));
                }
                match lines.get(next) {
                    Some(line) if next > 0 && re.is_match(line) => next += 1,
                    Some(line) => return Err(format!("'; nextln: {p}' does not match output line {}: {line}", next + 1)),
                    None => return Err(format!("'; nextln: {p}': the output ended")),
                }
            }
        }
    }
    not_in(&pending_not, &lines[next.min(lines.len())..])
}

/// Runs the pipeline on the file's input; the output is each pass's summary (and an analysis
/// pass's details) as `;` lines, then the model's text.
fn run(test: &FileTest) -> Result<String, String> {
    let mut model = parse(&test.input).map_err(|e| format!("input: {e}"))?;
    let mut pipeline = compactor::Pipeline::parse(&test.spec).map_err(|e| format!("run: {e}"))?;
    if let Some(n) = test.calibration_batches {
        let options = SessionOptions { threads: 1, ..Default::default() };
        pipeline = pipeline.with_calibration(compactor::RuntimeCalibrator::random(&model, n, 0, options).map_err(|e| format!("calibration: {e}"))?);
    }
    let report = pipeline.run_with(&mut model, RunOptions { verify_each: true, ..Default::default() }).map_err(|e| format!("pipeline: {e}"))?;
    let mut out = String::new();
    for pass in &report.passes {
        out.push_str(&format!("; {}: {}\n", pass.pass, pass.summary));
        if pass.kind == compactor_passes::PassKind::Analysis && !pass.details.is_null() {
            for line in serde_json::to_string_pretty(&pass.details).unwrap().lines() {
                out.push_str(&format!(";   {line}\n"));
            }
        }
    }
    out.push_str(&model_to_text(&model));
    Ok(out)
}

fn diff(expected: &str, actual: &str) -> String {
    similar::TextDiff::from_lines(expected, actual).unified_diff().header("expected", "actual").to_string()
}

/// Runs one file; `Err` says why it failed (with a diff for a changed output).
fn run_file(path: &Path, bless: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let test = split(&text)?;
    let output = run(&test)?;
    run_checks(&test.checks, &output).map_err(|e| format!("{e}\n--- output:\n{output}"))?;
    match &test.expected {
        Some(expected) if *expected != output => {
            if bless {
                std::fs::write(path, format!("{}{EXPECTED}\n{output}", test.input)).map_err(|e| e.to_string())?;
                return Ok(());
            }
            Err(format!("output differs from the expected section (COMPACTOR_BLESS=1 rewrites it):\n{}", diff(expected, &output)))
        }
        _ => Ok(()),
    }
}

#[test]
fn pass_file_tests() {
    let dir = filetests_dir();
    let files = ctir_files(&dir);
    assert!(!files.is_empty(), "no file tests under {}", dir.display());
    let bless = std::env::var("COMPACTOR_BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for file in &files {
        let name = file.strip_prefix(&dir).unwrap_or(file).display().to_string();
        match run_file(file, bless) {
            Ok(()) => eprintln!("ok    {name}"),
            Err(why) => {
                eprintln!("FAIL  {name}");
                failures.push(format!("=== {name}\n{why}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} file tests failed:\n{}", failures.len(), files.len(), failures.join("\n"));
}

#[test]
fn every_pass_has_a_file_test() {
    let dir = filetests_dir();
    let missing: Vec<&str> = passes().iter().map(|p| p.name).filter(|name| ctir_files(&dir.join(name)).is_empty()).collect();
    assert!(missing.is_empty(), "passes without a file test under {}: {missing:?}", dir.display());
}

#[test]
fn checks_match_in_order_and_fail_when_they_should() {
    let output = "a = Relu(x)\nb = Gemm(a, w)\nc = Add(b, b)\n";
    let ok = |checks: Vec<Directive>| run_checks(&checks, output);
    assert_eq!(ok(vec![Directive::Check("Relu".into()), Directive::Next("Gemm(a, {{[a-z]}})".into()), Directive::Next("Add".into())]), Ok(()));
    assert_eq!(ok(vec![Directive::Check("Relu".into()), Directive::Not("MatMul".into()), Directive::Check("Add".into())]), Ok(()));
    assert!(ok(vec![Directive::Check("Gemm".into()), Directive::Check("Relu".into())]).unwrap_err().contains("not found"));
    assert!(ok(vec![Directive::Check("Relu".into()), Directive::Next("Add".into())]).unwrap_err().contains("does not match output line 2"));
    assert!(ok(vec![Directive::Check("Relu".into()), Directive::Not("Gemm".into()), Directive::Check("Add".into())]).unwrap_err().contains("matched"));
    assert!(ok(vec![Directive::Check("Gemm".into()), Directive::Not("Add".into())]).unwrap_err().contains("matched"));
    // `{{...}}` is a regex, the rest literal.
    assert!(ok(vec![Directive::Check("Gemm(a, .)".into())]).is_err());
    assert!(split("; run: cleanup\nmodel ir_version=8 opset=[]\n").err().unwrap().contains("could not fail"));
    let t = split("; run: cleanup\n; check: x\nmodel\n; expected:\nout\n").unwrap();
    assert_eq!((t.spec.as_str(), t.input.as_str(), t.expected.as_deref()), ("cleanup", "; run: cleanup\n; check: x\nmodel\n", Some("out\n")));
}
