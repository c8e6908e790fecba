//! One JSON object on one line: what each role of the load prints when it ends, for scripts
//! to read (the crate has no JSON dependency and needs none for flat numbers and words).

use std::fmt::Write;

#[derive(Default)]
pub struct Report {
    fields: Vec<(&'static str, String)>,
}

impl Report {
    pub fn text(mut self, key: &'static str, value: &str) -> Self {
        let escaped: String = value
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c if c.is_control() => vec![' '],
                c => vec![c],
            })
            .collect();
        self.fields.push((key, format!("\"{escaped}\"")));
        self
    }

    pub fn int(mut self, key: &'static str, value: u64) -> Self {
        self.fields.push((key, value.to_string()));
        self
    }

    /// A float; not-a-number and infinities (which JSON lacks) become 0.
    pub fn num(mut self, key: &'static str, value: f64) -> Self {
        let v = if value.is_finite() { value } else { 0.0 };
        self.fields.push((key, format!("{v:.6}")));
        self
    }

    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            let _ = write!(s, "{}\"{k}\":{v}", if i > 0 { "," } else { "" });
        }
        s.push('}');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_order_with_strings_escaped() {
        let r = Report::default().text("role", "sink \"a\"\n").int("packets", 3).num("mpps", 0.5).num("x", f64::NAN);
        assert_eq!(r.to_json(), r#"{"role":"sink \"a\" ","packets":3,"mpps":0.500000,"x":0.000000}"#);
    }
}
