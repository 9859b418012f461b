//! Pipeline specs: `fold-constants,quantize(bits=4,block=32,method=rtn)` on the command line,
//! or the same as a TOML file. Both give the same list of [`PassSpec`]s.
//!
//! ```toml
//! [[pass]]
//! name = "cleanup"          # a preset expands in place
//! [[pass]]
//! name = "quantize"
//! bits = 4
//! block = 32
//! ```

use crate::pass::PassError;
use crate::registry::{find_pass, find_preset, valid_names};
use serde_json::{Map, Value};

/// One pass with its options, as written.
#[derive(Clone, Debug, PartialEq)]
pub struct PassSpec {
    pub name: String,
    pub options: Map<String, Value>,
}

/// Parses a command-line spec, expanding presets.
pub fn parse(spec: &str) -> Result<Vec<PassSpec>, PassError> {
    let items = Parser { text: spec, pos: 0 }.items()?;
    expand(items)
}

/// Parses a TOML pipeline file (`[[pass]]` tables, each with `name` and its options).
pub fn parse_toml(text: &str) -> Result<Vec<PassSpec>, PassError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        pass: Vec<toml::Table>,
    }
    let file: File = toml::from_str(text).map_err(|e| PassError::Spec(format!("TOML: {}", e.message())))?;
    let mut items = Vec::with_capacity(file.pass.len());
    for (i, mut table) in file.pass.into_iter().enumerate() {
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) => s,
            _ => return Err(PassError::Spec(format!("TOML: [[pass]] number {} has no `name = \"...\"`", i + 1))),
        };
        let options = serde_json::to_value(table).map_err(|e| PassError::Spec(format!("TOML: {e}")))?;
        let Value::Object(options) = options else { unreachable!("a table serializes to an object") };
        items.push(PassSpec { name, options });
    }
    expand(items)
}

fn expand(items: Vec<PassSpec>) -> Result<Vec<PassSpec>, PassError> {
    let mut out = Vec::new();
    for item in items {
        if find_pass(&item.name).is_some() {
            out.push(item);
        } else if let Some(preset) = find_preset(&item.name) {
            if !item.options.is_empty() {
                return Err(PassError::Spec(format!("preset '{}' takes no options", item.name)));
            }
            out.extend(parse(preset.spec)?);
        } else {
            return Err(PassError::UnknownPass { name: item.name, valid: valid_names() });
        }
    }
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> PassError {
        PassError::Spec(format!("{what} at column {} of '{}'", self.pos + 1, self.text))
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> &str {
        self.skip_space();
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || "-_.*/:@".contains(c)) {
            self.pos += self.peek().map_or(1, char::len_utf8);
        }
        &self.text[start..self.pos]
    }

    fn items(mut self) -> Result<Vec<PassSpec>, PassError> {
        let mut items = Vec::new();
        loop {
            let name = self.word().to_string();
            if name.is_empty() {
                return Err(self.error("expected a pass name"));
            }
            let mut options = Map::new();
            if self.eat('(') && !self.eat(')') {
                loop {
                    let key = self.word().to_string();
                    if key.is_empty() {
                        return Err(self.error("expected an option name"));
                    }
                    if !self.eat('=') {
                        return Err(self.error(&format!("expected '=' after option '{key}'")));
                    }
                    let value = self.value()?;
                    if options.insert(key.clone(), value).is_some() {
                        return Err(self.error(&format!("option '{key}' given twice")));
                    }
                    if self.eat(')') {
                        break;
                    }
                    if !self.eat(',') {
                        return Err(self.error("expected ',' or ')'"));
                    }
                }
            }
            items.push(PassSpec { name, options });
            self.skip_space();
            if self.pos == self.text.len() {
                return Ok(items);
            }
            if !self.eat(',') {
                return Err(self.error("expected ',' between passes"));
            }
        }
    }

    /// A number, `true`/`false`, a quoted string, a bare word (a string), or `[v, ...]`.
    fn value(&mut self) -> Result<Value, PassError> {
        self.skip_space();
        if self.eat('[') {
            let mut list = Vec::new();
            if self.eat(']') {
                return Ok(Value::Array(list));
            }
            loop {
                list.push(self.value()?);
                if self.eat(']') {
                    return Ok(Value::Array(list));
                }
                if !self.eat(',') {
                    return Err(self.error("expected ',' or ']' in a list"));
                }
            }
        }
        if self.eat('"') {
            let start = self.pos;
            while self.peek().is_some_and(|c| c != '"') {
                self.pos += self.peek().map_or(1, char::len_utf8);
            }
            let s = self.text[start..self.pos].to_string();
            if !self.eat('"') {
                return Err(self.error("unterminated string"));
            }
            return Ok(Value::String(s));
        }
        let word = self.word().to_string();
        if word.is_empty() {
            return Err(self.error("expected a value"));
        }
        Ok(match word.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            w => {
                if let Ok(i) = w.parse::<i64>() {
                    Value::from(i)
                } else if let Some(f) = w.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                    Value::Number(f)
                } else {
                    Value::String(word)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(specs: &[PassSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn cli_string_with_options_and_values_of_every_kind() {
        let specs = parse(" fold-constants( max_bytes = 4096 ), eliminate-dead-code ,fuse-matmul-add()").unwrap();
        assert_eq!(names(&specs), ["fold-constants", "eliminate-dead-code", "fuse-matmul-add"]);
        assert_eq!(specs[0].options["max_bytes"], json!(4096));
        let p = Parser { text: r#"[1, 2.5, true, rtn, "a,b"]"#, pos: 0 }.value().unwrap();
        assert_eq!(p, json!([1, 2.5, true, "rtn", "a,b"]));
    }

    #[test]
    fn presets_expand_and_toml_means_the_same() {
        let cli = parse("cleanup,fold-constants(max_bytes=10)").unwrap();
        assert_eq!(cli.first().unwrap().name, "lift-constants");
        let toml = parse_toml("[[pass]]\nname = \"cleanup\"\n[[pass]]\nname = \"fold-constants\"\nmax_bytes = 10\n").unwrap();
        assert_eq!(cli, toml);
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = parse("fold-constants(max_bytes 3)").unwrap_err().to_string();
        assert!(e.contains("expected '=' after option 'max_bytes' at column"), "{e}");
        let e = parse("fold-constantz").unwrap_err().to_string();
        assert!(e.contains("unknown pass 'fold-constantz'") && e.contains("fold-constants") && e.contains("cleanup"), "{e}");
        let e = parse("cleanup(x=1)").unwrap_err().to_string();
        assert!(e.contains("preset 'cleanup' takes no options"), "{e}");
        let e = parse("a,,b").unwrap_err().to_string();
        assert!(e.contains("expected a pass name"), "{e}");
        let e = parse_toml("[[pass]]\nbits = 3\n").unwrap_err().to_string();
        assert!(e.contains("has no `name"), "{e}");
    }
}
