//! Writes mtlsd's man pages and shell completions from its clap definition, [`mtlsd::cli::Cli`].
//!
//! `cargo run --release -p mtlsd --example gen-docs -- OUT_DIR` writes
//! `OUT_DIR/man/mtlsd.1`, one page per subcommand, nested ones included
//! (`mtlsd-ca-issue.1`), and `OUT_DIR/completions/` for bash (`mtlsd.bash`), zsh
//! (`_mtlsd`) and fish (`mtlsd.fish`). `scripts/package` runs it before `cargo deb`.
//!
//! An example rather than a subcommand of the daemon: clap_mangen and clap_complete
//! are then dev-dependencies, compiled into neither the `mtlsd` binary nor the
//! dependency tree of anything that uses the library.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Command, CommandFactory};
use clap_complete::Shell;
use mtlsd::cli::Cli;

fn main() -> Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: gen-docs OUT_DIR")?
        .into();
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_man_pages(&man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "mtlsd", &completions)
            .with_context(|| format!("writing the {shell} completion"))?;
    }
    Ok(())
}

/// `mtlsd.1` and one page per (nested) subcommand, each with a SEE ALSO section.
fn write_man_pages(dir: &Path) -> Result<()> {
    // As clap_mangen::generate_to does: built, subcommands get their full display
    // names (mtlsd-ca-issue); `help` is no page of its own.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut pages = Vec::new();
    collect(&root, &mut pages);
    let names: Vec<String> = pages.iter().map(page_name).collect();
    for page in pages {
        let name = page_name(&page);
        let man = clap_mangen::Man::new(page.clone())
            .source(format!("mtlsd {}", env!("CARGO_PKG_VERSION")));
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        let mut text = String::from_utf8(roff).context("clap_mangen wrote UTF-8")?;
        if name == "mtlsd" {
            text.push_str(FILES);
        }
        // The top page lists every other; a subcommand page its ancestors and descendants.
        let related: Vec<&String> = names
            .iter()
            .filter(|other| {
                name.starts_with(&format!("{other}-")) || other.starts_with(&format!("{name}-"))
            })
            .collect();
        text.push_str(".SH \"SEE ALSO\"\n");
        let refs: Vec<String> = related
            .iter()
            .map(|n| format!("\\fB{}\\fR(1)", n.replace('-', "\\-")))
            .collect();
        let _ = writeln!(text, "{}", refs.join(", "));
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `cmd` and every visible subcommand below it, depth first.
fn collect(cmd: &Command, pages: &mut Vec<Command>) {
    pages.push(cmd.clone());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, pages);
    }
}

/// The page's name: `mtlsd`, `mtlsd-ca`, `mtlsd-ca-issue`.
fn page_name(cmd: &Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned()
}

/// Where the packaged daemon keeps things (the layout of systemd/mtlsd.service).
const FILES: &str = r#".SH FILES
.TP
\fI/etc/mtlsd/mtlsd.toml\fR
The config the service reads (root:mtlsd, mode 0640). Validate it with \fBmtlsd check \-\-config /etc/mtlsd/mtlsd.toml\fR.
.TP
\fI/etc/mtlsd/mtlsd.toml.example\fR
A commented starting point.
.TP
\fI/var/lib/mtlsd/ca\fR
The built\-in CA (\fBmtlsd ca init\fR), owned by the mtlsd user.
.TP
\fI/usr/lib/systemd/system/mtlsd.service\fR, \fImtlsd.socket\fR
The hardened service and its optional socket activation; the package neither enables nor starts them.
"#;
