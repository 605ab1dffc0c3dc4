//! The address lists of `To:`, `Cc:` and `Bcc:` (RFC 5322 §3.4, UTF-8 as RFC 6532
//! allows), read strictly for `sendmail -t`.
//!
//! A lenient parser guesses what a malformed list means, and a guess decides who gets
//! the message: `To: a@remote\r\nBcc: b@local`, written with literal backslashes by a
//! script's non-interpreting `printf`, was read as a group that drops the real recipient
//! and adds another. Here anything outside the grammar is an error that names the first
//! thing that is wrong; the caller refuses the message (`EX_DATAERR`).
//!
//! Accepted: mailboxes (`addr@example.com`, `Name <addr@example.com>`, quoted names and
//! local parts, comments, domain literals), groups (`Team: a@x, b@y;`), and empty list
//! elements (`a@x, , b@y`, as RFC 5322's obsolete syntax allows). Refused: source routes,
//! unqualified names (`root`), and any character the grammar has no place for.

use std::iter::Peekable;
use std::str::CharIndices;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressListError(String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A run of atext (and UTF-8 beyond ASCII).
    Atom(String),
    /// The content of a quoted string, with its quoted pairs resolved; `raw` as written.
    Quoted { raw: String },
    /// `[...]` as written.
    DomainLiteral(String),
    /// One of `< > @ , ; : .`
    Special(char),
}

/// The addresses (`local@domain`, the local part as written) of one field's value.
pub fn parse(value: &str) -> Result<Vec<String>, AddressListError> {
    let tokens = tokenize(value)?;
    let mut parser = Parser { tokens, at: 0 };
    let mut addresses = Vec::new();
    loop {
        // Empty elements: `a@x, , b@y` and a trailing comma.
        while parser.eat(',') {}
        if parser.at_end() {
            return Ok(addresses);
        }
        parser.address(&mut addresses)?;
        if parser.at_end() {
            return Ok(addresses);
        }
        if !parser.eat(',') {
            return Err(parser.unexpected("a comma between addresses"));
        }
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn tokenize(value: &str) -> Result<Vec<Token>, AddressListError> {
    let mut tokens = Vec::new();
    let mut chars = value.char_indices().peekable();
    while let Some(&(_, c)) = chars.peek() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                chars.next();
            }
            '(' => skip_comment(&mut chars)?,
            '"' => tokens.push(quoted(&mut chars)?),
            '[' => tokens.push(domain_literal(&mut chars)?),
            '<' | '>' | '@' | ',' | ';' | ':' | '.' => {
                chars.next();
                tokens.push(Token::Special(c));
            }
            c if is_atext(c) && !c.is_control() => {
                let mut atom = String::new();
                while let Some(&(_, c)) = chars.peek().filter(|(_, c)| is_atext(*c)) {
                    atom.push(c);
                    chars.next();
                }
                tokens.push(Token::Atom(atom));
            }
            other => {
                return Err(AddressListError(format!(
                    "{} is not allowed in an address list",
                    describe(other)
                )));
            }
        }
    }
    Ok(tokens)
}

fn describe(c: char) -> String {
    if c.is_control() {
        format!("the control character U+{:04X}", c as u32)
    } else {
        format!("{c:?}")
    }
}

/// `(...)`, nested, with quoted pairs; skipped.
fn skip_comment(chars: &mut Peekable<CharIndices<'_>>) -> Result<(), AddressListError> {
    let mut depth = 0usize;
    while let Some((_, c)) = chars.next() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
            '\\' => {
                chars.next();
            }
            c if c.is_control() && c != '\t' => {
                return Err(AddressListError(format!(
                    "{} is not allowed in a comment",
                    describe(c)
                )));
            }
            _ => {}
        }
    }
    Err(AddressListError("a comment is not closed with ')'".into()))
}

fn quoted(chars: &mut Peekable<CharIndices<'_>>) -> Result<Token, AddressListError> {
    let mut raw = String::from('"');
    chars.next();
    while let Some((_, c)) = chars.next() {
        raw.push(c);
        match c {
            '"' => return Ok(Token::Quoted { raw }),
            '\\' => match chars.next() {
                Some((_, escaped)) if !escaped.is_control() || escaped == '\t' => raw.push(escaped),
                _ => break,
            },
            c if c.is_control() && c != '\t' => {
                return Err(AddressListError(format!(
                    "{} is not allowed in a quoted string",
                    describe(c)
                )));
            }
            _ => {}
        }
    }
    Err(AddressListError("a quoted string is not closed".into()))
}

fn domain_literal(chars: &mut Peekable<CharIndices<'_>>) -> Result<Token, AddressListError> {
    let mut raw = String::new();
    for (_, c) in chars.by_ref() {
        raw.push(c);
        match c {
            ']' => return Ok(Token::DomainLiteral(raw)),
            '[' if raw.len() > 1 => break,
            '\\' => break,
            c if c.is_control() => break,
            _ => {}
        }
    }
    Err(AddressListError(format!(
        "a malformed domain literal: {raw}"
    )))
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn at_end(&self) -> bool {
        self.at >= self.tokens.len()
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, special: char) -> bool {
        if self.peek() == Some(&Token::Special(special)) {
            self.at += 1;
            return true;
        }
        false
    }

    fn unexpected(&self, wanted: &str) -> AddressListError {
        let found = match self.peek() {
            None => "the end of the field".to_string(),
            Some(Token::Atom(a)) => format!("{a:?}"),
            Some(Token::Quoted { raw }) => raw.clone(),
            Some(Token::DomainLiteral(d)) => d.clone(),
            Some(Token::Special(c)) => format!("{c:?}"),
        };
        AddressListError(format!("expected {wanted}, found {found}"))
    }

    /// A mailbox or a group, its addresses appended to `out`.
    fn address(&mut self, out: &mut Vec<String>) -> Result<(), AddressListError> {
        let start = self.at;
        let phrase = self.phrase();
        match self.peek() {
            Some(Token::Special(':')) if phrase > 0 => {
                self.at += 1;
                self.group(out)
            }
            Some(Token::Special('<')) => {
                self.at += 1;
                out.push(self.addr_spec()?);
                if !self.eat('>') {
                    return Err(self.unexpected("'>' after the address"));
                }
                Ok(())
            }
            _ => {
                // An addr-spec: read it again from the start.
                self.at = start;
                out.push(self.addr_spec()?);
                Ok(())
            }
        }
    }

    /// Skips a display name (words and dots); returns how many tokens it had.
    fn phrase(&mut self) -> usize {
        let start = self.at;
        while matches!(
            self.peek(),
            Some(Token::Atom(_) | Token::Quoted { .. } | Token::Special('.'))
        ) {
            self.at += 1;
        }
        self.at - start
    }

    /// `Name: a@x, b@y;` after the colon.
    fn group(&mut self, out: &mut Vec<String>) -> Result<(), AddressListError> {
        loop {
            while self.eat(',') {}
            if self.eat(';') {
                return Ok(());
            }
            if self.at_end() {
                return Err(self.unexpected("';' at the end of the group"));
            }
            let before = out.len();
            self.address(out)?;
            if out.len() != before + 1 {
                return Err(AddressListError("a group inside a group".into()));
            }
            if !matches!(self.peek(), Some(Token::Special(',' | ';'))) {
                return Err(self.unexpected("',' or ';' in the group"));
            }
        }
    }

    /// `local@domain`: a dot-atom or quoted local part, a dot-atom or literal domain.
    fn addr_spec(&mut self) -> Result<String, AddressListError> {
        let local = match self.peek() {
            Some(Token::Quoted { raw }) => {
                let raw = raw.clone();
                self.at += 1;
                raw
            }
            Some(Token::Atom(_)) => self.dot_atom()?,
            _ => return Err(self.unexpected("an address")),
        };
        if !self.eat('@') {
            return Err(self.unexpected(&format!(
                "'@' and a domain after {local:?} (a full address such as {local}@example.com)"
            )));
        }
        let domain = match self.peek() {
            Some(Token::DomainLiteral(d)) => {
                let d = d.clone();
                self.at += 1;
                d
            }
            Some(Token::Atom(_)) => self.dot_atom()?,
            _ => return Err(self.unexpected("a domain after '@'")),
        };
        Ok(format!("{local}@{domain}"))
    }

    fn dot_atom(&mut self) -> Result<String, AddressListError> {
        let mut text = String::new();
        loop {
            match self.peek() {
                Some(Token::Atom(a)) => {
                    text.push_str(a);
                    self.at += 1;
                }
                _ => return Err(self.unexpected("a name")),
            }
            // Atoms must be joined by single dots; whitespace between them is not
            // visible here, so `a b@x` is refused at the next token instead.
            if !self.eat('.') {
                return Ok(text);
            }
            text.push('.');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: &str) -> Vec<String> {
        parse(value).unwrap_or_else(|e| panic!("{value:?}: {e}"))
    }

    fn err(value: &str) -> String {
        match parse(value) {
            Ok(found) => panic!("{value:?} should be refused, got {found:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_usual_forms() {
        assert_eq!(ok("alice@example.com"), ["alice@example.com"]);
        assert_eq!(
            ok("Alice <alice@example.com>, \"Bob, Jr.\" <bob@example.com>"),
            ["alice@example.com", "bob@example.com"]
        );
        assert_eq!(
            ok("alice@example.com (Alice), <bob@example.com>,"),
            ["alice@example.com", "bob@example.com"]
        );
        assert_eq!(
            ok("Team: a@x.test, b@y.test;, c@z.test"),
            ["a@x.test", "b@y.test", "c@z.test"]
        );
        assert_eq!(ok("undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(
            ok("\"odd local\"@example.com, x@[192.0.2.1]"),
            ["\"odd local\"@example.com", "x@[192.0.2.1]"]
        );
        assert_eq!(ok("Jörg <jörg@bücher.example>"), ["jörg@bücher.example"]);
        assert_eq!(
            ok("first.last@sub.example.com"),
            ["first.last@sub.example.com"]
        );
        assert_eq!(ok("  "), Vec::<String>::new());
    }

    #[test]
    fn literal_backslash_sequences_are_refused_not_guessed() {
        let why = err(r"a@remote.test\r\nBcc: b@example.com");
        assert!(why.contains("'\\\\'"), "{why}");
    }

    #[test]
    fn malformed_lists_are_refused_with_a_reason() {
        assert!(err("root").contains("full address"));
        assert!(err("a@b.test b@c.test").contains("comma"));
        assert!(err("Name <a@b.test").contains("'>'"));
        assert!(err("<@relay.test:a@b.test>").contains("an address"));
        assert!(err("\"unclosed@b.test").contains("not closed"));
        assert!(err("a@b.test (comment").contains("not closed"));
        assert!(err("a@").contains("domain"));
        assert!(err("a..b@c.test").contains("name"));
        assert!(err("Team: a@x.test").contains("';'"));
        assert!(err("a@b.test\u{7}").contains("control"));
    }
}
