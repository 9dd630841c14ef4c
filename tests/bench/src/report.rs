//! The report: a small table (figure, measured, reference, ratio, budget, PASS/MISS),
//! details, and the budget tally as the last line.

/// A figure's standing against its budget.
pub enum Verdict {
    /// Printed for information, no budget.
    Info,
    Budget {
        met: bool,
        text: String,
    },
}

impl Verdict {
    pub fn at_least(ratio: f64, min: f64) -> Self {
        Verdict::budget(ratio >= min, format!(">= {min:.2}x"))
    }

    pub fn at_most(ratio: f64, max: f64) -> Self {
        Verdict::budget(ratio <= max, format!("<= {max:.2}x"))
    }

    pub fn budget(met: bool, text: String) -> Self {
        Verdict::Budget { met, text }
    }
}

enum Line {
    Section(String),
    /// Six cells: figure, measured, reference, ratio, budget, result.
    Cells([String; 6]),
}

#[derive(Default)]
pub struct Report {
    top: Vec<String>,
    lines: Vec<Line>,
    details: Vec<String>,
    met: usize,
    missed: usize,
}

impl Report {
    /// A line printed above the table.
    pub fn top(&mut self, text: String) {
        self.top.push(text);
    }

    /// A line printed below the table.
    pub fn note(&mut self, text: String) {
        self.details.push(text);
    }

    pub fn section(&mut self, title: impl Into<String>) {
        self.lines.push(Line::Section(title.into()));
    }

    /// The column heads of a section: what is measured and what it is compared with.
    pub fn header(&mut self, measured: &str, reference: &str) {
        self.lines.push(Line::Cells([
            String::new(),
            measured.into(),
            reference.into(),
            "ratio".into(),
            "budget".into(),
            "result".into(),
        ]));
    }

    pub fn row(
        &mut self,
        figure: &str,
        measured: String,
        reference: String,
        ratio: Option<f64>,
        verdict: Verdict,
    ) {
        let (budget, result) = match verdict {
            Verdict::Info => ("(info)".to_string(), String::new()),
            Verdict::Budget { met, text } => {
                if met {
                    self.met += 1;
                } else {
                    self.missed += 1;
                }
                (text, if met { "PASS" } else { "MISS" }.to_string())
            }
        };
        self.lines.push(Line::Cells([
            figure.into(),
            measured,
            reference,
            ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}x")),
            budget,
            result,
        ]));
    }

    pub fn print(&self) {
        println!("incus-osd-bench");
        for t in &self.top {
            println!("{t}");
        }
        let mut width = [0usize; 6];
        for line in &self.lines {
            if let Line::Cells(cells) = line {
                for (w, c) in width.iter_mut().zip(cells) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        for line in &self.lines {
            match line {
                Line::Section(title) => println!("\n{title}"),
                Line::Cells(c) => println!(
                    "  {:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:<w4$}  {}",
                    c[0],
                    c[1],
                    c[2],
                    c[3],
                    c[4],
                    c[5],
                    w0 = width[0],
                    w1 = width[1],
                    w2 = width[2],
                    w3 = width[3],
                    w4 = width[4],
                ),
            }
        }
        println!("\ndetails:");
        for d in &self.details {
            println!("  {d}");
        }
        println!("\nbudgets: {} met, {} missed", self.met, self.missed);
    }
}
