//! The parser's cursor: whitespace and `;` comments, words, quoted strings, positions.

use super::TextError;

/// Characters of a bare word: names, numbers, dtypes, keywords.
fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"_./:+-".contains(&c)
}

pub(crate) struct Cursor<'s> {
    pub(crate) src: &'s str,
    pub(crate) pos: usize,
}

impl<'s> Cursor<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        Cursor { src, pos: 0 }
    }

    fn bytes(&self) -> &'s [u8] {
        self.src.as_bytes()
    }

    /// Line and column (both from 1; the column counts characters) of a byte offset.
    pub(crate) fn line_column(&self, pos: usize) -> (usize, usize) {
        let before = &self.src[..pos.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    pub(crate) fn invalid_at(&self, pos: usize, reason: impl Into<String>) -> TextError {
        let (line, column) = self.line_column(pos);
        TextError::Invalid { line, column, reason: reason.into() }
    }

    /// "expected X, found Y" at the next token.
    pub(crate) fn expected(&mut self, what: &str) -> TextError {
        self.skip_ws();
        let (line, column) = self.line_column(self.pos);
        TextError::Expected { line, column, expected: what.to_string(), found: self.describe_next() }
    }

    fn describe_next(&self) -> String {
        let rest = &self.bytes()[self.pos..];
        match rest.first() {
            None => "end of input".into(),
            Some(b'"') => "a quoted string".into(),
            Some(&c) if is_word_char(c) => {
                let n = rest.iter().take_while(|&&c| is_word_char(c)).count();
                format!("'{}'", &self.src[self.pos..self.pos + n])
            }
            Some(_) => format!("'{}'", self.src[self.pos..].chars().next().unwrap_or('?')),
        }
    }

    /// Skips spaces, line breaks and `;` comments.
    pub(crate) fn skip_ws(&mut self) {
        while let Some(&c) = self.bytes().get(self.pos) {
            match c {
                b' ' | b'\t' | b'\r' | b'\n' => self.pos += 1,
                b';' => self.pos += self.src[self.pos..].find('\n').unwrap_or(self.src.len() - self.pos),
                _ => break,
            }
        }
    }

    /// Skips spaces and tabs on the current line.
    pub(crate) fn skip_inline_ws(&mut self) {
        while matches!(self.bytes().get(self.pos), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    pub(crate) fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos >= self.src.len()
    }

    /// The next character after whitespace, without taking it.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes().get(self.pos).copied()
    }

    /// Takes `c` if it comes next.
    pub(crate) fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn expect(&mut self, c: u8) -> Result<(), TextError> {
        if self.eat(c) { Ok(()) } else { Err(self.expected(&format!("'{}'", c as char))) }
    }

    /// Takes `s` if the input continues with it exactly (no whitespace skipped).
    pub(crate) fn eat_str(&mut self, s: &str) -> bool {
        if self.src[self.pos..].starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// The next bare word, without taking it. A trailing `:` is not part of a word.
    pub(crate) fn peek_word(&mut self) -> Option<&'s str> {
        self.skip_ws();
        let rest = &self.bytes()[self.pos..];
        let mut n = rest.iter().take_while(|&&c| is_word_char(c)).count();
        while n > 0 && rest[n - 1] == b':' {
            n -= 1;
        }
        (n > 0).then(|| &self.src[self.pos..self.pos + n])
    }

    pub(crate) fn word(&mut self) -> Option<&'s str> {
        let w = self.peek_word()?;
        self.pos += w.len();
        Some(w)
    }

    pub(crate) fn expect_word(&mut self, what: &str) -> Result<&'s str, TextError> {
        match self.word() {
            Some(w) => Ok(w),
            None => Err(self.expected(what)),
        }
    }

    /// Takes the keyword `kw` or fails.
    pub(crate) fn keyword(&mut self, kw: &str) -> Result<(), TextError> {
        if self.peek_word() == Some(kw) {
            self.pos += kw.len();
            Ok(())
        } else {
            Err(self.expected(&format!("'{kw}'")))
        }
    }

    /// A bare word or a quoted string, as UTF-8.
    pub(crate) fn name(&mut self, what: &str) -> Result<String, TextError> {
        if self.peek() == Some(b'"') {
            let start = self.pos;
            let bytes = self.string()?;
            return String::from_utf8(bytes).map_err(|_| self.invalid_at(start, format!("{what} is not UTF-8")));
        }
        self.expect_word(what).map(str::to_string)
    }

    /// A double-quoted string with `\"`, `\\`, `\n`, `\t`, `\r`, `\u{HEX}` and `\xHH` escapes.
    pub(crate) fn string(&mut self) -> Result<Vec<u8>, TextError> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let start = self.pos;
            let Some(c) = self.src[self.pos..].chars().next() else {
                return Err(self.invalid_at(start, "unterminated string"));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\n' => return Err(self.invalid_at(start, "line break in a string (write \\n)")),
                '\\' => {
                    let Some(e) = self.src[self.pos..].chars().next() else {
                        return Err(self.invalid_at(start, "unterminated string"));
                    };
                    self.pos += e.len_utf8();
                    match e {
                        '"' => out.push(b'"'),
                        '\\' => out.push(b'\\'),
                        'n' => out.push(b'\n'),
                        't' => out.push(b'\t'),
                        'r' => out.push(b'\r'),
                        'x' => {
                            let hex = self.src.get(self.pos..self.pos + 2).and_then(|h| u8::from_str_radix(h, 16).ok());
                            let b = hex.ok_or_else(|| self.invalid_at(start, "\\x needs two hex digits"))?;
                            self.pos += 2;
                            out.push(b);
                        }
                        'u' => {
                            let close = self.src[self.pos..].find('}');
                            let ch = close
                                .filter(|_| self.src[self.pos..].starts_with('{'))
                                .and_then(|end| u32::from_str_radix(&self.src[self.pos + 1..self.pos + end], 16).ok())
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.invalid_at(start, "\\u needs {HEX} naming a character"))?;
                            self.pos += close.unwrap_or(0) + 1;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        other => return Err(self.invalid_at(start, format!("unknown escape \\{other}"))),
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }

    /// The rest of the current line (for a node's name after `#`).
    pub(crate) fn rest_of_line(&mut self) -> &'s str {
        let end = self.src[self.pos..].find('\n').map_or(self.src.len(), |n| self.pos + n);
        let line = &self.src[self.pos..end];
        self.pos = end;
        line.trim_end()
    }
}
